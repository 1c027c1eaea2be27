"""2-D convolution on cybn's matrix and convolution kernels (NumPy for groups and other
dtypes)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _matmul
from ..ops.conv import (col2im, conv_planes, conv_planes_input_grad, conv_planes_weight_grad,
                        conv_rows, conv_rows_weight_grad, depthwise_backward,
                        depthwise_forward, to_channels_first, to_channels_last,
                        transposed_flipped_rows, weight_as_is)
from ._args import as_rng, int_pair, positive_int
from .module import Module, Parameter

__all__ = ["Conv2d"]

# Channels-first output planes below this many pixels take the channels-last columns route
# (measured on the bench models' layers: at 8x8 and 4x4 it is 2-2.6x faster than a product
# per sample, at 16x16 even, at 32x32 half as fast); so does a batch of one at any size
# (its one product spreads over the threads by output pixels: ResNet-18's 3x3 convolutions
# at batch 1 took 1.2-1.3 ms instead of 1.4-1.9 ms at 56x56-14x14, 2026-12-06)
ROWS_BELOW = 256
# ... except a 1x1 convolution at any batch and size: a plain product per sample on the
# planes (the transposes around the rows route took 2-4x the product's time; MobileNetV2's
# NCHW inference 18.0 -> 13.1 ms at batch 1, 94.9 -> 72.0 ms at batch 8, training step
# 95 -> 81 ms and 441 -> 404 ms; a 2-core Xeon, 2026-12-07)
POINTWISE_PLANES = True


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch): dense convolutions (``groups=1``) and
    depthwise ones on compiled kernels, other groups by NumPy matrix products, one per group.

    weight has shape (out_channels, in_channels // groups, kh, kw) in both layouts (PyTorch's
    state_dict layout); input is (N, C, H, W), or (N, H, W, C) with ``channels_last``. Zero
    padding. ``groups`` splits the channels into groups convolved separately
    (``groups == in_channels``: depthwise); ``dilation`` spaces the kernel's taps.

    ``activation="relu"`` (or ``"relu6"``) applies ReLU (ReLU6) to the output inside the
    convolution's products, while each tile is in registers (or each sample in the cache):
    the same numbers as a :class:`ReLU` (:class:`ReLU6`) layer after it, in one pass fewer.
    :func:`cybn.fold_batchnorm` and :func:`cybn.fuse` produce such layers from Conv2d,
    BatchNorm2d and ReLU. The backward
    reads the output the forward returned (to find where the ReLU cut), so that array must
    not be changed in place before it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, channels_last: bool = False, dtype=np.float32, rng=None,
                 groups: int = 1, dilation=1, activation: str | None = None):
        super().__init__()
        _matmul.activation_code(activation)
        self.activation = activation
        rng = as_rng(rng)
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding", minimum=0)
        self.dilation = int_pair(dilation, "dilation")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide in_channels ({in_channels}) and "
                             f"out_channels ({out_channels})")
        self.channels_last = channels_last
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, kh, kw)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype))
        else:
            self._parameters["bias"] = None
        self._cache: tuple | None = None
        self._epilogue: tuple | None = None

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v, default in (
            ("groups", self.groups, 1), ("dilation", self.dilation, (1, 1)),
            ("activation", self.activation, None)) if v != default)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}")

    def _to_nhwc(self, x):
        return x if self.channels_last else x.transpose(0, 2, 3, 1)

    def _grouped_weight(self) -> np.ndarray:
        """weight as (groups, out // groups, in // groups * kh * kw)."""
        return self.weight.data.reshape(self.groups, self.out_channels // self.groups, -1)

    def _output_shape(self, in_shape: tuple) -> tuple:
        """The output's shape for an input of ``in_shape`` (in this layer's layout)."""
        h, w = in_shape[1:3] if self.channels_last else in_shape[2:4]
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        ho = (h + 2 * ph - (kh - 1) * self.dilation[0] - 1) // sh + 1
        wo = (w + 2 * pw - (kw - 1) * self.dilation[1] - 1) // sw + 1
        n, out = in_shape[0], self.out_channels
        return (n, ho, wo, out) if self.channels_last else (n, out, ho, wo)

    def forward(self, x):
        return self._forward(x, None, self.activation)

    def forward_fused(self, x, residual, activation):
        """``activation(conv(x) + residual)`` with the add and the activation in the
        products' epilogue (the ending of :class:`Residual`'s blocks when the body ends in
        a convolution, as after :func:`cybn.fold_batchnorm`); after a residual,
        :meth:`backward` returns ``(dx, dresidual)``. The same bits as the separate passes."""
        _matmul.activation_code(activation)
        if residual is not None:
            residual = np.asarray(residual)
            expected = self._output_shape(np.shape(x))
            if residual.shape != expected:
                raise ValueError(f"Conv2d: residual must have the output's shape {expected}, "
                                 f"got {residual.shape}")
        return self._forward(x, residual, activation)

    def _forward(self, x, residual, activation):
        act = _matmul.activation_code(activation)
        y = self._forward_route(x, residual, act)
        object.__setattr__(self, "_epilogue", (residual is not None, (y, act) if act else None))
        return y

    @staticmethod
    def _epilogue_after(y: np.ndarray, residual, act: int) -> np.ndarray:
        """The epilogue as passes over y (a new array, changed in place where possible):
        + residual, then the activation act (_matmul.ACTIVATIONS)."""
        if residual is not None:
            if residual.dtype == y.dtype:
                np.add(y, residual, out=y)
            else:
                y = y + residual
        return _matmul.apply_activation(y, act)

    @staticmethod
    def _in_kernel(residual, dtype) -> bool:
        """Whether the kernels can add this residual in their epilogue (one dtype, C order)."""
        return residual is None or (residual.dtype == dtype and residual.flags.c_contiguous)

    def _forward_route(self, x, residual, act: int):
        x = np.asarray(x)
        c_axis = 3 if self.channels_last else 1
        if x.ndim != 4 or x.shape[c_axis] != self.in_channels:
            layout = "(N, H, W, C)" if self.channels_last else "(N, C, H, W)"
            raise ValueError(f"Conv2d expects 4-D input {layout} with C={self.in_channels}, "
                             f"got {x.shape}")
        xh = self._to_nhwc(x)
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        dil_h, dil_w = self.dilation
        ekh, ekw = (kh - 1) * dil_h + 1, (kw - 1) * dil_w + 1  # the dilated kernel's extent
        ho = (xh.shape[1] + 2 * ph - ekh) // sh + 1
        wo = (xh.shape[2] + 2 * pw - ekw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d: input {x.shape} is smaller than the kernel")
        if x.dtype.kind != "f" and not x.dtype.name == "bfloat16":
            raise TypeError(f"Conv2d: x must hold floating-point numbers, got dtype {x.dtype}")
        c = xh.shape[3]
        if self.groups == c == self.out_channels and xh.dtype in (np.float32, np.float64):
            # depthwise, one filter per channel: compiled kernels, in x's own layout
            x = np.ascontiguousarray(x)
            self._cache = ("compiled depthwise", x, x.shape)
            y = depthwise_forward(x, self.weight.data, None if self.bias is None else
                                  self.bias.data, self.stride, self.padding, self.dilation,
                                  self.channels_last)
            return self._epilogue_after(y, residual, act)
        if self.groups == 1 and xh.dtype in (np.float32, np.float64):
            # compiled products, no column matrix (see _dense_forward)
            return self._dense_forward(x, ho, wo, residual, act)
        if ph or pw:
            xh = np.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        n = xh.shape[0]
        if self.groups == c:  # depthwise with a channel multiplier: a pass per kernel tap
            y = self._depthwise_forward(xh, ho, wo)
            self._cache = ("depthwise", xh, x.shape)
            y = y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))
            return self._epilogue_after(y, residual, act)
        win = sliding_window_view(xh, (ekh, ekw), axis=(1, 2))
        win = win[:, ::sh, ::sw, :, ::dil_h, ::dil_w]  # N, Ho, Wo, C, kh, kw
        G = self.groups
        cols = win.reshape(n * ho * wo, G, -1)  # N,Ho,Wo,C,kh,kw with C = (G, C // G)
        if G == 1:
            y = cols[:, 0] @ self._grouped_weight()[0].T
        else:  # one matrix product per group: (G, M, K) @ (G, K, out // G)
            y = np.matmul(cols.transpose(1, 0, 2), self._grouped_weight().transpose(0, 2, 1))
            y = y.transpose(1, 0, 2).reshape(n * ho * wo, self.out_channels)
        if self.bias is not None:
            y += self.bias.data
        y = y.reshape(n, ho, wo, self.out_channels)
        self._cache = ("im2col", cols, xh.shape, x.shape)
        y = y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))
        return self._epilogue_after(y, residual, act)

    def _tap_major_weight(self) -> np.ndarray:
        """weight (out, in, kh, kw) as (out, kh * kw * in), the column order of the
        channels-last column matrix (a copy)."""
        w = self.weight.data
        return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)

    def _dense_forward(self, x, ho: int, wo: int, residual=None, act: int = 0):
        """groups=1 on cybn's threads. Channels-first with output planes of at least
        ROWS_BELOW pixels and more than one sample, or with a 1x1 kernel (POINTWISE_PLANES):
        y[n] = weight @ columns(x[n]), the
        columns packed from x as the products run (ops.conv.conv_planes). Otherwise one
        product over the whole batch in channels-last order (a channels-first x and y
        transposed around it: for small planes or one sample, one large product beats a
        small one per sample) whose rows read their windows where
        they lie (ops.conv.conv_rows; its weight gradient gathers from the same windows).
        The residual and the ReLU run in the products' epilogue where the residual's layout
        allows (for a channels-first output of the rows route it does not: passes after)."""
        fusable = self._in_kernel(residual, x.dtype)
        pointwise = POINTWISE_PLANES and self.kernel_size == (1, 1)
        if not self.channels_last and (pointwise or ho * wo >= ROWS_BELOW and x.shape[0] > 1):
            x = np.ascontiguousarray(x)
            self._cache = ("planes", x, x.shape)
            y = conv_planes(x, self.weight.data, None if self.bias is None else self.bias.data,
                            self.stride, self.padding, self.dilation,
                            residual if fusable else None, act if fusable else 0)
            return y if fusable else self._epilogue_after(y, residual, act)
        bias = None if self.bias is None else self.bias.data
        xh = np.ascontiguousarray(x) if self.channels_last else to_channels_last(x)
        self._cache = ("rows", xh, x.shape)
        inside = fusable and (self.channels_last or residual is None)
        y = conv_rows(xh, self.weight.data, bias, self.kernel_size, self.padding,
                      self.dilation, self.stride, residual if inside else None,
                      act if inside else 0)
        y = y if self.channels_last else to_channels_first(y)
        return y if inside else self._epilogue_after(y, residual, act)

    def _rows_backward(self, xh, x_shape, dy, input_grad: bool = True):
        """The backward of the rows route of _dense_forward from its channels-last input xh
        (x_shape: x's, in its layout)."""
        out, cin, kh, kw = self.weight.data.shape
        dy = np.asarray(dy, dtype=xh.dtype)
        dyh = np.ascontiguousarray(dy) if self.channels_last else to_channels_last(dy)
        n, ho, wo = dyh.shape[:3]
        dw = conv_rows_weight_grad(dyh, xh, self.kernel_size, self.stride, self.padding,
                                   self.dilation)
        dy2 = dyh.reshape(n * ho * wo, out)
        if self.bias is not None:
            ones = np.ones((1, len(dy2)), dy2.dtype)
            self.bias.accumulate(_matmul.matmul_sum(ones, dy2)[0])
        # (out, kh, kw, cin) -> (out, cin, kh, kw) with the compiled transpose, then added
        self.weight.accumulate(to_channels_first(dw.reshape(out, kh, kw, cin)))
        if not input_grad:
            return None
        (dh, dw_), (ph, pw) = self.dilation, self.padding
        if self.stride == (1, 1) and ph <= dh * (kh - 1) and pw <= dw_ * (kw - 1):
            # the convolution of dy with the flipped, transposed weight (cin, out, kh, kw)
            w = np.asarray(self.weight.data, dtype=xh.dtype)
            rows = transposed_flipped_rows(w, weight_as_is(n, *xh.shape[1:3], cin))
            dx = conv_rows(dyh, w.transpose(1, 0, 2, 3), None, self.kernel_size,
                           (dh * (kh - 1) - ph, dw_ * (kw - 1) - pw), self.dilation,
                           rows=rows)
        else:  # the columns' gradient, folded back
            dcols = _matmul.matmul(dy2, self._tap_major_weight(),
                                   out=self._workspace("dcols", (len(dy2), kh * kw * cin),
                                                       xh.dtype))
            dx = col2im(dcols, xh.shape, self.kernel_size, self.stride, self.padding,
                        self.dilation, ho, wo)
        return dx if self.channels_last else to_channels_first(dx)

    def _planes_backward(self, x, dy, input_grad: bool = True):
        """The channels-first dense backward from the forward's input x."""
        dy = np.ascontiguousarray(dy, dtype=x.dtype)
        geometry = (self.stride, self.padding, self.dilation)
        self.weight.accumulate(conv_planes_weight_grad(dy, x, self.kernel_size, *geometry))
        if self.bias is not None:
            self.bias.accumulate(dy.sum(axis=(0, 2, 3)))
        if not input_grad:
            return None
        return conv_planes_input_grad(dy, self.weight.data, x.shape, *geometry)

    def _saved_with_grad(self, dy) -> tuple:
        """The forward's record and dy, checked against the forward's output shape, then
        through the epilogue's ReLU (0 where the output is 0 or below)."""
        saved, dy = self._take_saved(dy, lambda saved: self._output_shape(saved[-1]))
        with_residual, fused = self.__dict__.get("_epilogue") or (False, None)
        if fused is not None:  # into a reused buffer, unless it is handed back as dresidual
            dy = _matmul.activation_grad(*fused, dy,
                                         None if with_residual else self._workspace)
        return saved, dy

    def backward(self, dy):
        """dx, or ``(dx, dresidual)`` after :meth:`forward_fused` with a residual."""
        with_residual = (self.__dict__.get("_epilogue") or (False,))[0]
        saved, dy = self._saved_with_grad(dy)
        dx = self._backward_route(saved, dy)
        return (dx, dy) if with_residual else dx

    def backward_parameters(self, dy) -> None:
        saved = self.__dict__.get("_cache")
        if saved is None or saved[0] not in ("planes", "rows"):
            return super().backward_parameters(dy)
        saved, dy = self._saved_with_grad(dy)
        if saved[0] == "planes":
            self._planes_backward(saved[1], dy, input_grad=False)
        else:
            self._rows_backward(saved[1], saved[2], dy, input_grad=False)
        return None

    def _taps(self, xh, ho: int, wo: int):
        """(i, j, the input elements tap (i, j) of every output reads: (N, Ho, Wo, C))."""
        (sh, sw), (kh, kw) = self.stride, self.kernel_size
        dil_h, dil_w = self.dilation
        for i in range(kh):
            for j in range(kw):
                r, q = i * dil_h, j * dil_w
                yield i, j, xh[:, r:r + sh * (ho - 1) + 1:sh, q:q + sw * (wo - 1) + 1:sw, :]

    def _depthwise_weight(self) -> np.ndarray:
        """weight as (C, multiplier, kh, kw): output channel c * multiplier + m reads c."""
        return self.weight.data.reshape(self.in_channels, -1, *self.kernel_size)

    def _depthwise_forward(self, xh, ho: int, wo: int) -> np.ndarray:
        n, c = xh.shape[0], xh.shape[3]
        wd = self._depthwise_weight()
        y = np.zeros((n, ho, wo, c, wd.shape[1]), dtype=np.result_type(xh, wd))
        for i, j, tap in self._taps(xh, ho, wo):
            y += tap[..., None] * wd[:, :, i, j]
        y = y.reshape(n, ho, wo, self.out_channels)
        if self.bias is not None:
            y += self.bias.data
        return y

    def _depthwise_backward(self, xh, in_shape, dy) -> np.ndarray:
        dyh = self._to_nhwc(dy)
        n, ho, wo = dyh.shape[:3]
        c = xh.shape[3]
        wd = self._depthwise_weight()
        dy5 = dyh.reshape(n, ho, wo, c, wd.shape[1])
        dw = np.zeros(wd.shape, dtype=np.result_type(xh, dy5))
        dxp = np.zeros(xh.shape, dtype=np.result_type(dy5, wd))
        for i, j, tap in self._taps(xh, ho, wo):
            dw[:, :, i, j] = np.einsum("nhwc,nhwcm->cm", tap, dy5)
            (sh, sw), (r, q) = self.stride, (i * self.dilation[0], j * self.dilation[1])
            dxp[:, r:r + sh * (ho - 1) + 1:sh, q:q + sw * (wo - 1) + 1:sw, :] += \
                (dy5 * wd[:, :, i, j]).sum(axis=-1)
        self.weight.accumulate(dw.reshape(self.weight.data.shape))
        if self.bias is not None:
            self.bias.accumulate(dyh.reshape(-1, self.out_channels).sum(axis=0))
        ph, pw = self.padding
        dx = dxp[:, ph:xh.shape[1] - ph, pw:xh.shape[2] - pw, :]
        return np.ascontiguousarray(dx if self.channels_last else dx.transpose(0, 3, 1, 2))

    def _compiled_depthwise_backward(self, x, dy) -> np.ndarray:
        dy = np.asarray(dy)
        dx, dw = depthwise_backward(x, self.weight.data, dy, self.stride, self.padding,
                                    self.dilation, self.channels_last)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(dy.sum(axis=(0, 1, 2) if self.channels_last else (0, 2, 3)))
        return dx

    def _backward_route(self, record: tuple, dy):
        kind, *saved = record
        if kind == "planes":
            return self._planes_backward(saved[0], dy)
        if kind == "rows":
            return self._rows_backward(saved[0], saved[1], dy)
        if kind == "compiled depthwise":
            return self._compiled_depthwise_backward(saved[0], dy)
        if kind == "depthwise":
            return self._depthwise_backward(saved[0], saved[1], dy)
        cols, padded_shape, in_shape = saved
        n, hp, wp, c = padded_shape
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        dil_h, dil_w = self.dilation
        G = self.groups
        dyh = self._to_nhwc(dy)
        ho, wo = dyh.shape[1], dyh.shape[2]
        dy3 = dyh.reshape(n * ho * wo, G, -1)
        wg = self._grouped_weight()
        if G == 1:
            dw_g = (dy3[:, 0].T @ cols[:, 0])[None]
            dcols = (dy3[:, 0] @ wg[0])[:, None]
        else:
            dy_t = dy3.transpose(1, 0, 2)                           # (G, M, out // G)
            dw_g = np.matmul(dy_t.transpose(0, 2, 1), cols.transpose(1, 0, 2))
            dcols = np.matmul(dy_t, wg).transpose(1, 0, 2)          # (M, G, K)
        self.weight.accumulate(dw_g.reshape(self.weight.data.shape))
        if self.bias is not None:
            self.bias.accumulate(dy3.reshape(n * ho * wo, -1).sum(axis=0))
        dcols = dcols.reshape(n, ho, wo, c, kh, kw)
        dxp = np.zeros(padded_shape, dtype=dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                r, q = i * dil_h, j * dil_w
                dxp[:, r:r + sh * ho:sh, q:q + sw * wo:sw, :] += dcols[:, :, :, :, i, j]
        dx = dxp[:, ph:hp - ph, pw:wp - pw, :]
        return np.ascontiguousarray(dx if self.channels_last else dx.transpose(0, 3, 1, 2))
