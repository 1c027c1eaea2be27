"""Every layer's backward and every compiled entry point, called with wrong-shaped and
wrong-dtype arguments: a clear exception, never a crash (each case runs in a subprocess, so
an abort or a heap corruption fails the test instead of taking pytest down) and never a
silent answer."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cybn
from cybn import _kernels

# ---------------------------------------------------------------------------------------
# Layers: forward once, then backward with a dy of the wrong shape or dtype.
# ---------------------------------------------------------------------------------------

LAYERS = {
    "AvgPool2d": ("cybn.AvgPool2d(2)", (2, 8, 16, 16)),
    "AvgPool2d-last": ("cybn.AvgPool2d(2, channels_last=True)", (2, 16, 16, 8)),
    "MaxPool2d": ("cybn.MaxPool2d(2)", (2, 8, 16, 16)),
    "MaxPool2d-last": ("cybn.MaxPool2d(2, channels_last=True)", (2, 16, 16, 8)),
    "MaxPool2d-overlap": ("cybn.MaxPool2d(3, stride=2)", (2, 4, 9, 9)),
    "AdaptiveAvgPool2d": ("cybn.AdaptiveAvgPool2d(1)", (2, 8, 5, 5)),
    "Conv2d": ("cybn.Conv2d(8, 4, 3, padding=1)", (2, 8, 6, 6)),
    "Conv2d-last": ("cybn.Conv2d(8, 4, 3, channels_last=True)", (2, 6, 6, 8)),
    "Conv2d-depthwise": ("cybn.Conv2d(8, 8, 3, groups=8, padding=1)", (2, 8, 6, 6)),
    "Conv2d-depthwise-last": ("cybn.Conv2d(8, 8, 3, groups=8, channels_last=True)",
                              (2, 6, 6, 8)),
    "Conv2d-grouped": ("cybn.Conv2d(8, 4, 3, groups=2)", (2, 8, 6, 6)),
    "Linear": ("cybn.Linear(8, 3)", (4, 8)),
    "ReLU": ("cybn.ReLU()", (4, 8)),
    "Flatten": ("cybn.Flatten()", (2, 3, 4)),
    "Dropout": ("cybn.Dropout(0.5, rng=0)", (4, 8)),
    "BatchNorm2d": ("cybn.BatchNorm2d(8)", (4, 8, 5, 5)),
    "BatchNorm2d-ghost": ("cybn.BatchNorm2d(8, ghost_batch_size=2)", (4, 8, 5, 5)),
    "LayerNorm": ("cybn.LayerNorm(8)", (4, 8)),
    "GroupNorm": ("cybn.GroupNorm(2, 8)", (4, 8, 5, 5)),
    "Concat": ("cybn.Concat(cybn.Conv2d(8, 3, 1), cybn.ReLU())", (2, 8, 5, 5)),
    "Concat-last": ("cybn.Concat(cybn.Identity(), cybn.Identity(), channels_last=True)",
                    (2, 5, 5, 8)),
    "ChannelSlice": ("cybn.ChannelSlice(2, 6)", (2, 8, 5, 5)),
    "ChannelShuffle-last": ("cybn.ChannelShuffle(4, channels_last=True)", (2, 5, 5, 8)),
    "Residual": ("cybn.Residual(cybn.Sequential(cybn.Conv2d(8, 8, 3, padding=1), "
                 "cybn.BatchNorm2d(8)), activation='relu')", (2, 8, 6, 6)),
}

BAD_DY = {  # name -> expression of a bad dy given the good output y
    "one-row-more": "np.ones((y.shape[0],) + tuple(s + 1 for s in y.shape[1:]), y.dtype)",
    "one-row-less": "np.ones((y.shape[0],) + tuple(max(s - 1, 0) for s in y.shape[1:]), "
                    "y.dtype)",
    "more-samples": "np.ones((y.shape[0] + 3,) + y.shape[1:], y.dtype)",
    "flat": "np.ones(y.size, y.dtype)",
    "transposed": "np.ascontiguousarray(np.ones(y.shape[::-1], y.dtype))",
    "scalar": "np.float32(1.0)",
    "strings": "np.full(y.shape, 'a')",
    "objects": "np.full(y.shape, None, dtype=object)",
    "complex": "np.ones(y.shape, np.complex64)",
    "none": "None",
}

LAYER_SCRIPT = """
import json, sys
import numpy as np
import cybn
results = {}
for name, (make, shape) in json.loads(sys.argv[1]).items():
    for bad, expr in json.loads(sys.argv[2]).items():
        layer = eval(make)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = layer(x)
        try:
            dy = eval(expr)
        except Exception:
            continue
        if np.shape(dy) == y.shape and getattr(dy, "dtype", None) is not None and \\
                dy.dtype.kind in "f":
            continue
        try:
            layer.backward(dy)
            results[name + "/" + bad] = "no error"
        except (TypeError, ValueError) as err:
            results[name + "/" + bad] = "ok" if "dy" in str(err) else "unnamed: " + str(err)
        except Exception as err:
            results[name + "/" + bad] = type(err).__name__ + ": " + str(err)
        # the saved record survives a rejected dy: a correct one still works
        try:
            layer.backward(np.ones(y.shape, y.dtype))
        except Exception as err:
            results[name + "/" + bad + "/retry"] = type(err).__name__ + ": " + str(err)
print(json.dumps(results))
"""


def run_script(script: str, *args, timeout=300) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"crashed (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_layer_backward_rejects_a_wrong_dy_without_crashing():
    results = run_script(LAYER_SCRIPT, json.dumps(LAYERS), json.dumps(BAD_DY))
    bad = {k: v for k, v in results.items() if v != "ok"}
    assert not bad, bad
    assert len(results) >= len(LAYERS) * 7


def test_the_reported_pooling_case_raises():
    m = cybn.AvgPool2d(2)
    m(np.ones((2, 8, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"dy must have the shape .*\(2, 8, 8, 8\)"):
        m.backward(np.ones((2, 8, 9, 8), np.float32))
    dx = m.backward(np.ones((2, 8, 8, 8), np.float32))  # the saved forward is still there
    np.testing.assert_array_equal(dx, np.full((2, 8, 16, 16), 0.25, np.float32))


def test_depthwise_conv_rejects_a_wrong_dy_in_both_layouts():
    for channels_last, shape, bad in ((False, (2, 4, 6, 6), (2, 4, 5, 6)),
                                      (True, (2, 6, 6, 4), (2, 6, 5, 4))):
        conv = cybn.Conv2d(4, 4, 3, groups=4, padding=1, channels_last=channels_last)
        conv(np.ones(shape, np.float32))
        with pytest.raises(ValueError, match="dy"):
            conv.backward(np.ones(bad, np.float32))


# ---------------------------------------------------------------------------------------
# The compiled entry points themselves: arrays that disagree with each other.
# ---------------------------------------------------------------------------------------

f32 = np.float32


def kernel_cases():
    """(name, kernel, args) with one inconsistent argument each."""
    z = lambda *s, dtype=f32: np.zeros(s, dtype)  # noqa: E731
    shared_image = np.zeros((2, 6, 6, 3), f32)
    shared_square = np.zeros((2, 4, 4), f32)
    u8 = lambda *s: np.zeros(s, np.uint8)  # noqa: E731
    d = lambda *s: np.zeros(s)  # noqa: E731
    u32 = lambda *s: np.zeros(s, np.uint32)  # noqa: E731
    shared_words = np.zeros((2, 6, 4), np.uint32)
    K = _kernels
    cases = [
        ("avgpool_backward_planes dy too tall", K.avgpool_backward_planes,
         (z(16, 9, 8), 2, 2, 2, 2, 0, 0, False, True, 0, z(16, 16, 16), 1)),
        ("avgpool_backward_planes more planes", K.avgpool_backward_planes,
         (z(17, 8, 8), 2, 2, 2, 2, 0, 0, False, True, 0, z(16, 16, 16), 1)),
        ("avgpool_backward_rows dy too tall", K.avgpool_backward_rows,
         (z(2, 9, 8, 8), 2, 2, 2, 2, 0, 0, False, True, 0, z(2, 16, 16, 8), 1)),
        ("avgpool_forward_rows y too tall", K.avgpool_forward_rows,
         (z(2, 16, 16, 8), 2, 2, 2, 2, 0, 0, False, True, 0, z(2, 9, 8, 8), 1)),
        ("avgpool_forward_planes stride 0", K.avgpool_forward_planes,
         (z(4, 8, 8), 2, 2, 0, 2, 0, 0, False, True, 0, z(4, 4, 4), 1)),
        ("avgpool_forward_planes ceil-mode count in floor mode", K.avgpool_forward_planes,
         (z(4, 9, 9), 2, 2, 2, 2, 0, 0, False, True, 0, z(4, 5, 5), 1)),
        ("avgpool_forward_rows negative padding", K.avgpool_forward_rows,
         (z(2, 8, 8, 3), 2, 2, 2, 2, -1, 0, False, True, 0, z(2, 4, 4, 3), 1)),
        ("adaptive_avgpool_planes window past the input", K.adaptive_avgpool_planes,
         (z(4, 8, 8), np.array([0, 4]), np.array([4, 9]), np.array([0, 4]), np.array([4, 8]),
          z(4, 2, 2), 1)),
        ("adaptive_avgpool_rows empty window", K.adaptive_avgpool_rows,
         (z(2, 8, 8, 3), np.array([0, 4]), np.array([4, 8]), np.array([0, 4]),
          np.array([0, 8]), z(2, 2, 2, 3), 1)),
        ("adaptive_avgpool_backward_planes dy wider", K.adaptive_avgpool_backward_planes,
         (z(4, 2, 3), np.array([0, 4]), np.array([4, 8]), np.array([0, 4]), np.array([4, 8]),
          z(4, 8, 8), 1)),
        ("adaptive_avgpool_backward_rows window past the input",
         K.adaptive_avgpool_backward_rows,
         (z(2, 2, 2, 3), np.array([0, 4]), np.array([4, 8]), np.array([0, 5]),
          np.array([4, 9]), z(2, 8, 8, 3), 1)),
        ("adaptive_maxpool_planes one start short", K.adaptive_maxpool_planes,
         (z(4, 8, 8), np.array([0]), np.array([4, 8]), np.array([0, 4]), np.array([4, 8]),
          z(4, 2, 2), np.zeros((4, 2, 2), np.int32), 1)),
        ("adaptive_maxpool_rows index smaller", K.adaptive_maxpool_rows,
         (z(2, 8, 8, 3), np.array([0, 4]), np.array([4, 8]), np.array([0, 4]),
          np.array([4, 8]), z(2, 2, 2, 3), np.zeros((2, 2, 2, 2), np.int32), 1)),
        ("adaptive_maxpool_backward_planes index outside the plane",
         K.adaptive_maxpool_backward_planes,
         (z(4, 2, 2), np.full((4, 2, 2), 64, np.int32), z(4, 8, 8), 1)),
        ("adaptive_maxpool_backward_rows negative index", K.adaptive_maxpool_backward_rows,
         (z(2, 2, 2, 3), np.full((2, 2, 2, 3), -1, np.int32), z(2, 8, 8, 3), 1)),
        ("transpose_batch dst not transposed", K.transpose_batch, (z(2, 3, 4), z(2, 3, 4), 1)),
        ("transpose_batch dst is src", K.transpose_batch, (shared_square, shared_square, 1)),
        ("global_avgpool y short", K.global_avgpool, (z(4, 9, 3), z(4, 2), 1)),
        ("global_avgpool no pixels", K.global_avgpool, (z(4, 0, 3), z(4, 3), 1)),
        ("global_avgpool y is x", None, None),
        ("maxpool_backward_rows dy wider", K.maxpool_backward_rows,
         (z(2, 8, 9, 8), u8(2, 8, 9, 8), 2, 2, 2, 2, 0, 0, 1, 1, False, z(2, 16, 16, 8), 1)),
        ("maxpool_backward_rows arg smaller", K.maxpool_backward_rows,
         (z(2, 8, 8, 8), u8(2, 8, 8, 4), 2, 2, 2, 2, 0, 0, 1, 1, False, z(2, 16, 16, 8), 1)),
        ("maxpool_backward_planes tap out of the window", K.maxpool_backward_planes,
         (z(4, 2, 2), np.full((4, 2, 2), 9, np.uint8), 2, 2, 2, 2, 0, 0, 1, 1, False,
          z(4, 4, 4), 1)),
        ("maxpool_backward_planes tap in the padding", K.maxpool_backward_planes,
         (z(4, 3, 3), np.zeros((4, 3, 3), np.uint8), 3, 3, 2, 2, 1, 1, 1, 1, False,
          z(4, 5, 5), 1)),
        ("maxpool_forward_planes arg smaller", K.maxpool_forward_planes,
         (z(4, 8, 8), 2, 2, 2, 2, 0, 0, 1, 1, False, z(4, 4, 4), u8(4, 4, 3), 1)),
        ("maxpool_forward_planes zero threads", K.maxpool_forward_planes,
         (z(4, 8, 8), 2, 2, 2, 2, 0, 0, 1, 1, False, z(4, 4, 4), u8(4, 4, 4), 0)),
        ("maxpool_forward_rows dilation 0", K.maxpool_forward_rows,
         (z(2, 8, 8, 3), 2, 2, 2, 2, 0, 0, 0, 1, False, z(2, 4, 4, 3), u8(2, 4, 4, 3), 1)),
        ("depthwise_forward bias short", K.depthwise_forward,
         (z(2, 6, 6, 8), z(3, 3, 8), z(7), 1, 1, 1, 1, 1, 1, z(2, 6, 6, 8), 1)),
        ("depthwise_forward y too big", K.depthwise_forward,
         (z(2, 6, 6, 8), z(3, 3, 8), z(8), 1, 1, 1, 1, 1, 1, z(2, 7, 6, 8), 1)),
        ("depthwise_backward dy more samples", K.depthwise_backward,
         (z(2, 6, 6, 8), z(3, 3, 8), z(3, 6, 6, 8), 1, 1, 1, 1, 1, 1, z(2, 6, 6, 8),
          d(2, 3, 3, 8), 1)),
        ("depthwise_backward_planes dy taller", K.depthwise_backward_planes,
         (z(16, 6, 6), z(8, 3, 3), z(16, 7, 6), 1, 1, 1, 1, 1, 1, z(16, 6, 6), d(16, 3, 3),
          1)),
        ("depthwise_forward_planes planes not whole samples", K.depthwise_forward_planes,
         (z(15, 6, 6), z(8, 3, 3), z(8), 1, 1, 1, 1, 1, 1, z(15, 6, 6), 1)),
        ("im2col_rows cols short", K.im2col_rows,
         (z(2, 6, 6, 4), 3, 3, 1, 1, 1, 1, 1, 1, z(71, 36), 6, 6, 1)),
        ("im2col_rows wrong Ho", K.im2col_rows,
         (z(2, 6, 6, 4), 3, 3, 1, 1, 1, 1, 1, 1, z(2 * 7 * 6, 36), 7, 6, 1)),
        ("col2im_rows dcols short", K.col2im_rows,
         (z(71, 36), 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, z(2, 6, 6, 4), 1)),
        ("im2col_planes cols short", K.im2col_planes,
         (z(8, 6, 6), 3, 3, 1, 1, 1, 1, 1, 1, z(8, 9, 35), 6, 6, 1)),
        ("col2im_planes dilation 0", K.col2im_planes,
         (z(8, 9, 36), 3, 3, 1, 1, 1, 1, 0, 1, 6, 6, z(8, 6, 6), 1)),
        ("matmul inner sizes differ", K.matmul, (z(3, 4), z(5, 2), z(3, 2), False, 1)),
        ("matmul out short", K.matmul, (z(3, 4), z(4, 2), z(2, 2), False, 1)),
        ("matmul bias short", K.matmul, (z(3, 4), z(4, 2), z(3, 2), False, 1, z(1))),
        ("matmul bias with accumulate", K.matmul, (z(3, 4), z(4, 2), z(3, 2), True, 1, z(2))),
        ("matmul_batch batches differ", K.matmul_batch,
         (z(2, 3, 4), z(3, 4, 2), z(2, 3, 2), False, 1)),
        ("matmul_batch no threads", K.matmul_batch,
         (z(2, 3, 4), z(2, 4, 2), z(2, 3, 2), False, 0)),
        ("matmul_sum out short", K.matmul_sum, (z(2, 3, 4), z(2, 4, 2), z(3, 1), 1, 1)),
        ("matmul_sum chunk 0", K.matmul_sum, (z(2, 3, 4), z(2, 4, 2), z(3, 2), 0, 1)),
        ("matmul_split inner sizes differ", K.matmul_split, (z(3, 4), z(3, 2), z(3, 2), 8, 1)),
        ("matmul_split chunk 0", K.matmul_split, (z(3, 4), z(4, 2), z(3, 2), 0, 1)),
        ("conv_forward_planes weight short", K.conv_forward_planes,
         (z(2, 3, 6, 6), z(4, 26), z(4), 3, 3, 1, 1, 1, 1, 1, 1, z(2, 4, 6, 6), 1)),
        ("conv_forward_planes wrong Ho", K.conv_forward_planes,
         (z(2, 3, 6, 6), z(4, 27), z(0), 3, 3, 1, 1, 1, 1, 1, 1, z(2, 4, 7, 6), 1)),
        ("conv_forward_planes bias short", K.conv_forward_planes,
         (z(2, 3, 6, 6), z(4, 27), z(3), 3, 3, 1, 1, 1, 1, 1, 1, z(2, 4, 6, 6), 1)),
        ("conv_forward_rows weight short", K.conv_forward_rows,
         (z(2, 6, 6, 3), z(4, 26), z(4), 3, 3, 1, 1, 1, 1, 1, 1, z(2, 6, 6, 4), 1)),
        ("conv_forward_rows wrong Wo", K.conv_forward_rows,
         (z(2, 6, 6, 3), z(4, 27), z(0), 3, 3, 1, 1, 1, 1, 1, 1, z(2, 6, 5, 4), 1)),
        ("conv_forward_rows wrong Ho for the stride", K.conv_forward_rows,
         (z(2, 6, 6, 3), z(4, 27), z(0), 3, 3, 2, 2, 1, 1, 1, 1, z(2, 6, 3, 4), 1)),
        ("conv_forward_rows y is x", K.conv_forward_rows,
         (shared_image, z(3, 27), z(0), 3, 3, 1, 1, 1, 1, 1, 1, shared_image, 1)),
        ("conv_forward_rows y is bias", None, None),
        ("conv_weight_grad_rows dy's samples", K.conv_weight_grad_rows,
         (z(3, 6, 6, 4), z(2, 6, 6, 3), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 27), 1, 1)),
        ("conv_weight_grad_rows dweight short", K.conv_weight_grad_rows,
         (z(2, 6, 6, 4), z(2, 6, 6, 3), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 26), 1, 1)),
        ("conv_weight_grad_rows wrong Wo", K.conv_weight_grad_rows,
         (z(2, 6, 5, 4), z(2, 6, 6, 3), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 27), 1, 1)),
        ("conv_weight_grad_rows chunk 0", K.conv_weight_grad_rows,
         (z(2, 6, 6, 4), z(2, 6, 6, 3), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 27), 0, 1)),
        ("conv_weight_grad_planes dy's samples", K.conv_weight_grad_planes,
         (z(3, 4, 6, 6), z(2, 3, 6, 6), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 27), 1, 1)),
        ("conv_weight_grad_planes dweight short", K.conv_weight_grad_planes,
         (z(2, 4, 6, 6), z(2, 3, 6, 6), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 26), 1, 1)),
        ("conv_weight_grad_planes chunk 0", K.conv_weight_grad_planes,
         (z(2, 4, 6, 6), z(2, 3, 6, 6), 3, 3, 1, 1, 1, 1, 1, 1, z(4, 27), 0, 1)),
        ("relu_forward keep short", K.relu_forward, (z(10), z(10), u8(9), 1)),
        ("flipped_weight_rows rows short", K.flipped_weight_rows,
         (z(4, 3, 9), z(3, 9, 3), True, 1)),
        ("flipped_weight_rows rows in the other order", K.flipped_weight_rows,
         (z(4, 3, 9), z(3, 9, 4), False, 1)),
        ("copy_channels dst's channels run past the end", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 4), 0, 1, 1, 3, 3, 1)),
        ("copy_channels src's channels run past the end", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 4), 1, 1, 0, 1, 3, 1)),
        ("copy_channels negative start", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 4), -1, 1, 0, 1, 2, 1)),
        ("copy_channels step 0", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 4), 0, 0, 0, 1, 3, 1)),
        ("copy_channels negative count", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 4), 0, 1, 0, 1, -1, 1)),
        ("copy_channels dst has fewer samples", K.copy_channels,
         (u32(3, 3, 4), u32(2, 6, 4), 0, 1, 0, 1, 3, 1)),
        ("copy_channels dst's planes shorter", K.copy_channels,
         (u32(2, 3, 4), u32(2, 6, 3), 0, 1, 0, 1, 3, 1)),
        ("copy_channels dst is src", K.copy_channels,
         (shared_words, shared_words, 0, 1, 3, 1, 3, 1)),
        ("relu_backward dx short", K.relu_backward, (z(10), u8(10), z(9), 1)),
        ("plane_moments mean short", K.plane_moments, (z(2, 3, 40), d(2), d(3), 1)),
        ("plane_infer y short", K.plane_infer,
         (z(2, 3, 40), d(3), d(3), d(3), z(2, 3, 39), z(2, 3, 40), 0, False, 1)),
        ("plane_train_forward weight short", K.plane_train_forward,
         (z(2, 3, 40), d(2), d(3), 1e-5, z(2, 3, 40), z(2, 3, 40), 0, d(3), d(3), d(3), 0,
          False, 1)),
        ("plane_backward dy more samples", K.plane_backward,
         (z(3, 3, 40), z(2, 3, 40), d(3), d(3), d(3), True, z(2, 3, 40), 0, z(2, 3, 40),
          z(2, 3, 40), d(3), d(3), d(3), d(3), 0, False, 1)),
        ("row_moments C not dividing the row", K.row_moments,
         (z(4, 10), 3, 1, d(3), d(3), 1)),
        ("row_infer shift short", K.row_infer,
         (z(4, 12), 3, 1, d(2), d(3), d(3), z(4, 12), z(4, 12), 0, False, 1)),
        ("row_backward mean short", K.row_backward,
         (z(4, 12), z(4, 12), 3, 1, d(2), d(3), d(3), True, z(4, 12), 0, z(4, 12),
          z(4, 12), d(3), d(3), d(3), d(3), False, 1)),
        ("row_grad_apply dx overlapping x", None, None),
        ("ghost_backward mean short", K.ghost_backward,
         (z(2, 24), z(2, 24), z(2, 24), True, 2, 0, 3, 4, d(2, 2), d(2, 3), d(3), d(2, 3),
          d(2, 3), np.zeros(2, np.int32), False, 1)),
        ("ghost_backward weight short", K.ghost_backward,
         (z(2, 24), z(2, 24), z(2, 24), True, 2, 0, 3, 4, d(2, 3), d(2, 3), d(2), d(2, 3),
          d(2, 3), np.zeros(2, np.int32), False, 1)),
        ("ghost_train_forward geometry beyond the row", K.ghost_train_forward,
         (z(2, 24), z(2, 24), True, 3, 0, 3, 4, d(3), d(3), 1e-5, d(2, 3), d(2, 3), d(2, 3),
          np.zeros(2, np.int32), False, 1)),
        ("masked_row_moments part short", K.masked_row_moments,
         (z(1025, 3), u8(1025), 1.0, d(3), d(3), d(2, 3), 1)),
        ("masked_plane_grad_apply mask short", K.masked_plane_grad_apply,
         (z(2, 3, 40), z(2, 3, 40), u8(2, 39), d(3), d(3), d(3), z(2, 3, 40), 1)),
        ("sample_group_forward mean short", K.sample_group_forward,
         (z(2, 24), 1, 6, 4, 1, True, 2, d(6), d(6), 1e-5, z(2, 24), d(2, 1), d(2, 2),
          d(2, 2), False, 1)),
        ("group_backward sum_dy short", K.group_backward,
         (z(4, 8), z(4, 8), 4, d(4), d(4), d(4), z(4, 8), d(1, 4), d(2, 4), False, 1)),
        ("rows_backward weight short", K.rows_backward,
         (z(4, 8), z(4, 8), d(4), d(4), d(7), True, z(4, 8), d(8), d(8), 1)),
        ("rows_forward bias short", K.rows_forward,
         (z(4, 8), d(8), d(7), 1e-5, True, z(4, 8), d(4), d(4), 1)),
        ("rows_forward invstd short", K.rows_forward,
         (z(4, 8), d(8), d(8), 1e-5, True, z(4, 8), d(4), d(3), 1)),
        ("merge_stats_rows m2s short", K.merge_stats_rows,
         (d(3), d(3, 4), d(2, 4), d(4), d(4))),
        ("update_running batch short", K.update_running, (d(4), d(3), 0.1, 1.0)),
        ("grad_coefficients_array k3 short", K.grad_coefficients_array,
         (4.0, d(3), d(3), d(3), d(3), True, d(3), d(3), d(2))),
        ("half_from_float dst short", K.half_from_float,
         (z(8), np.zeros(7, np.uint16), 0)),
        ("half_to_float unknown kind", K.half_to_float,
         (np.zeros(8, np.uint16), z(8), 5)),
        ("group_train_forward groups not whole samples", K.group_train_forward,
         (z(3, 8), 4, d(4), d(4), 1e-5, z(3, 8), d(3), d(3), d(3), False, 1)),
        ("infer_scale weight short", K.infer_scale, (d(4), d(3), 1e-5, d(4))),
        ("masked_plane_moments mask short", K.masked_plane_moments,
         (z(2, 3, 40), z(2, 39), 1.0, d(3), d(3), 1)),
        ("masked_row_grad_apply dy short", K.masked_row_grad_apply,
         (z(3, 3), z(4, 3), u8(4), d(3), d(3), d(3), z(4, 3), 1)),
        ("maxpool_forward_rows y wider", K.maxpool_forward_rows,
         (z(2, 8, 8, 4), 2, 2, 2, 2, 0, 0, 1, 1, False, z(2, 4, 5, 4), u8(2, 4, 5, 4), 1)),
        ("activation_forward y short", K.activation_forward, (z(10), z(9), 3, 0.0, 0.0, 1)),
        ("activation_forward unknown kind", K.activation_forward,
         (z(10), z(10), 99, 0.0, 0.0, 1)),
        ("activation_backward dx is x", None, None),
        ("activation_backward hardtanh min above max", K.activation_backward,
         (z(10), z(10), z(10), 0, 1.0, -1.0, 1)),
        ("parallel_copy dst short", K.parallel_copy, (z(10), z(9), 1)),
        ("plane_grad_apply k2 short", K.plane_grad_apply,
         (z(2, 3, 40), z(2, 3, 40), d(3), d(3), d(2), d(3), z(2, 3, 40), False, 1)),
        ("plane_grad_sums x fewer channels", K.plane_grad_sums,
         (z(2, 3, 40), z(2, 2, 40), d(3), d(3), d(3), 1)),
        ("row_grad_sums sum_dy short", K.row_grad_sums,
         (z(4, 12), z(4, 12), 3, 1, d(3), d(2), d(3), 1)),
        ("row_train_forward invstd short", K.row_train_forward,
         (z(4, 12), 3, 1, d(3), d(3), 1e-5, z(4, 12), z(4, 12), 0, d(3), d(3), d(2), False,
          1)),
        ("sample_group_backward dx short", K.sample_group_backward,
         (z(2, 24), z(2, 24), 1, 6, 4, 1, True, 2, d(2, 2), d(2, 2), d(6), z(2, 23), d(2, 6),
          d(2, 6), False, 1)),
        ("train_coefficients_array scale short", K.train_coefficients_array,
         (4.0, d(3), 1e-5, d(3), d(3), d(3), d(2))),
    ]
    buf = np.zeros(60, f32)  # x and dx partly the same memory
    x, dx = buf[:48].reshape(4, 12), buf[12:].reshape(4, 12)
    cases[[c[0] for c in cases].index("row_grad_apply dx overlapping x")] = (
        "row_grad_apply dx overlapping x", K.row_grad_apply,
        (x, x, 3, 1, d(3), d(3), d(3), d(3), dx, False, 1))
    act = np.zeros(10, f32)
    cases[[c[0] for c in cases].index("activation_backward dx is x")] = (
        "activation_backward dx is x", K.activation_backward, (act, z(10), act, 3, 0.0, 0.0, 1))
    shared = np.zeros(24, f32)  # y inside x
    cases[[c[0] for c in cases].index("global_avgpool y is x")] = (
        "global_avgpool y is x", K.global_avgpool,
        (shared.reshape(4, 2, 3), shared[:12].reshape(4, 3), 1))
    out = np.zeros(2 * 6 * 6 * 4, f32)  # the output and the bias partly the same memory
    cases[[c[0] for c in cases].index("conv_forward_rows y is bias")] = (
        "conv_forward_rows y is bias", K.conv_forward_rows,
        (z(2, 6, 6, 3), z(4, 27), out[:4], 3, 3, 1, 1, 1, 1, 1, 1, out.reshape(2, 6, 6, 4), 1))
    return cases


def test_every_compiled_entry_point_is_covered():
    names = {c[1].__name__ for c in kernel_cases()}
    public = {n for n in dir(_kernels._impl) if callable(getattr(_kernels._impl, n))
              and not n.startswith("_") and not n.endswith("_half")
              and not n.startswith("fast_") and n[0].islower()}
    assert public - names == set()


@pytest.mark.parametrize("name,kernel,args", kernel_cases(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_compiled_entry_point_checks_its_arrays(name, kernel, args):
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(ValueError, match="cybn kernel arguments"):
        kernel(*args)
    for a, b in zip(args, before):  # nothing written
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


def test_half_entry_points_check_their_arrays():
    h = lambda *s: np.zeros(s, np.uint16)  # noqa: E731
    d = lambda *s: np.zeros(s)  # noqa: E731
    K = _kernels._impl
    with pytest.raises(ValueError, match="cybn kernel arguments"):
        K.plane_moments_half(h(2, 3, 40), d(2), d(3), 1, 0)
    with pytest.raises(ValueError, match="cybn kernel arguments"):
        K.row_infer_half(h(4, 12), 3, 1, d(3), d(3), d(3), h(4, 11), h(4, 12), 0, False, 1, 0)
    with pytest.raises(ValueError, match="cybn kernel arguments"):
        K.plane_backward_half(h(2, 3, 40), h(2, 3, 40), d(3), d(3), d(3), True, h(2, 3, 40),
                              0, h(2, 3, 40), h(2, 3, 40), d(3), d(3), d(3), d(3), 0, False,
                              1, 7)


KERNEL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_crash_safety import kernel_cases
for name, kernel, args in kernel_cases():
    try:
        kernel(*args)
        print("no error:", name)
    except ValueError:
        pass
print("{{}}")
"""


def test_compiled_entry_points_never_crash_the_interpreter():
    script = KERNEL_SCRIPT.format(tests=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no error" not in done.stdout, done.stdout


def test_wrong_dtype_arrays_are_refused_by_the_entry_points():
    with pytest.raises((TypeError, ValueError)):
        _kernels.avgpool_backward_planes(np.zeros((4, 2, 2), np.int32), 2, 2, 2, 2, 0, 0,
                                         False, True, 0, np.zeros((4, 4, 4), np.float32), 1)
    with pytest.raises((TypeError, ValueError)):  # mixed float32 / float64
        _kernels.relu_backward(np.zeros(4, np.float64), np.zeros(4, np.uint8),
                               np.zeros(4, np.float32), 1)
    with pytest.raises((TypeError, ValueError)):  # not contiguous
        _kernels.relu_forward(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32),
                              np.zeros(4, np.uint8), 1)


def test_layer_script_is_importable_python():
    compile(textwrap.dedent(LAYER_SCRIPT), "layer_script", "exec")
