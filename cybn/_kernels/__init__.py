"""Picks the compiled kernel variant for this CPU and re-exports its functions.

setup.py compiles the kernel sources of this folder (the ``.pxi`` files that
``kernels.pxi`` lists and the C headers they use) once per instruction set (``baseline``
for any x86-64, ``avx2``, ``avx512``). At import the widest variant the CPU supports is
chosen from NumPy's CPU feature detection. ``CYBN_ISA=baseline|avx2|avx512`` forces one (an
unsupported or missing choice raises ImportError). The variants give bitwise identical
results except the matrix products (``matmul*``), which use FMA where the CPU has it and
agree across variants within rounding; only speed differs. Every kernel gives the same bits
for any thread count.
"""

import functools
import importlib
import os
import sys
import types

# The CPU features each variant needs, as NumPy names them.
REQUIRED_FEATURES = {
    "avx512": ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL", "AVX2", "FMA3"),
    "avx2": ("AVX2", "FMA3", "F16C", "BMI2"),
    "baseline": (),
}
PREFERENCE = ("avx512", "avx2", "baseline")


def cpu_features():
    """NumPy's runtime CPU feature table (empty when this NumPy does not expose it)."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return dict(importlib.import_module(module).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def supported(isa, features=None):
    """True when the CPU has every feature the ``isa`` variant was compiled for."""
    features = cpu_features() if features is None else features
    return all(features.get(name, False) for name in REQUIRED_FEATURES[isa])


def available_variants():
    """Variants that are both built and runnable on this CPU, widest first."""
    found = []
    for isa in PREFERENCE:
        if not supported(isa):
            continue
        try:
            importlib.import_module(f"cybn._kernels.{isa}")
        except ImportError:
            continue
        found.append(isa)
    return found


def load_variant(isa):
    """Import one variant module by name."""
    if isa not in REQUIRED_FEATURES:
        raise ImportError(f"CYBN_ISA must be one of {', '.join(PREFERENCE)}, got {isa!r}")
    if not supported(isa):
        raise ImportError(f"this CPU lacks the features of cybn's {isa!r} kernels")
    return importlib.import_module(f"cybn._kernels.{isa}")


def select_variant():
    forced = os.environ.get("CYBN_ISA", "").strip().lower()
    if forced:
        return load_variant(forced)
    variants = available_variants()
    if not variants:
        raise ImportError("no compiled cybn kernels found: build the package first "
                          "(pip install .)")
    return importlib.import_module(f"cybn._kernels.{variants[0]}")


_impl = select_variant()

ISA = _impl.ISA
EP_RESIDUAL = _impl.EP_RESIDUAL_BIT
EP_RELU = _impl.EP_RELU_BIT
OPENMP_ENABLED = _impl.OPENMP_ENABLED
plane_moments = _impl.plane_moments
plane_infer = _impl.plane_infer
plane_train_forward = _impl.plane_train_forward
plane_backward = _impl.plane_backward
row_moments = _impl.row_moments
row_infer = _impl.row_infer
row_train_forward = _impl.row_train_forward
row_backward = _impl.row_backward
grad_coefficients_array = _impl.grad_coefficients_array
merge_stats_rows = _impl.merge_stats_rows
plane_grad_sums = _impl.plane_grad_sums
row_grad_sums = _impl.row_grad_sums
plane_grad_apply = _impl.plane_grad_apply
row_grad_apply = _impl.row_grad_apply
train_coefficients_array = _impl.train_coefficients_array
update_running = _impl.update_running
infer_scale = _impl.infer_scale
fast_infer = _impl.fast_infer
fast_train = _impl.fast_train
fast_backward = _impl.fast_backward
fast_relu = _impl.fast_relu
fast_relu_backward = _impl.fast_relu_backward
fast_linear = _impl.fast_linear
fast_rows_forward = _impl.fast_rows_forward
fast_rows_backward = _impl.fast_rows_backward
fast_group_forward = _impl.fast_group_forward
fast_group_backward = _impl.fast_group_backward
FAST_PLANE_RULE = _impl.FAST_PLANE_RULE
parallel_copy = _impl.parallel_copy
sample_group_forward = _impl.sample_group_forward
sample_group_backward = _impl.sample_group_backward
rows_forward = _impl.rows_forward
rows_backward = _impl.rows_backward
group_train_forward = _impl.group_train_forward
group_backward = _impl.group_backward
depthwise_forward = _impl.depthwise_forward
depthwise_backward = _impl.depthwise_backward
depthwise_forward_planes = _impl.depthwise_forward_planes
depthwise_backward_planes = _impl.depthwise_backward_planes
maxpool_forward_planes = _impl.maxpool_forward_planes
avgpool_forward_planes = _impl.avgpool_forward_planes
avgpool_backward_planes = _impl.avgpool_backward_planes
avgpool_forward_rows = _impl.avgpool_forward_rows
avgpool_backward_rows = _impl.avgpool_backward_rows
matmul = _impl.matmul
matmul_batch = _impl.matmul_batch
matmul_sum = _impl.matmul_sum
matmul_split = _impl.matmul_split
conv_forward_planes = _impl.conv_forward_planes
conv_weight_grad_planes = _impl.conv_weight_grad_planes
conv_weight_grad_rows = _impl.conv_weight_grad_rows
conv_forward_rows = _impl.conv_forward_rows
im2col_rows = _impl.im2col_rows
col2im_rows = _impl.col2im_rows
im2col_planes = _impl.im2col_planes
masked_plane_moments = _impl.masked_plane_moments
ghost_train_forward = _impl.ghost_train_forward
ghost_backward = _impl.ghost_backward
masked_row_moments = _impl.masked_row_moments
masked_plane_grad_apply = _impl.masked_plane_grad_apply
masked_row_grad_apply = _impl.masked_row_grad_apply
col2im_planes = _impl.col2im_planes
transpose_batch = _impl.transpose_batch
flipped_weight_rows = _impl.flipped_weight_rows
relu_forward = _impl.relu_forward
relu_backward = _impl.relu_backward
copy_channels = _impl.copy_channels
activation_forward = _impl.activation_forward
activation_backward = _impl.activation_backward
maxpool_backward_planes = _impl.maxpool_backward_planes
maxpool_forward_rows = _impl.maxpool_forward_rows
maxpool_backward_rows = _impl.maxpool_backward_rows
global_avgpool = _impl.global_avgpool
adaptive_avgpool_planes = _impl.adaptive_avgpool_planes
adaptive_avgpool_backward_planes = _impl.adaptive_avgpool_backward_planes
adaptive_avgpool_rows = _impl.adaptive_avgpool_rows
adaptive_avgpool_backward_rows = _impl.adaptive_avgpool_backward_rows
adaptive_maxpool_planes = _impl.adaptive_maxpool_planes
adaptive_maxpool_backward_planes = _impl.adaptive_maxpool_backward_planes
adaptive_maxpool_rows = _impl.adaptive_maxpool_rows
adaptive_maxpool_backward_rows = _impl.adaptive_maxpool_backward_rows
half_from_float = _impl.half_from_float
half_to_float = _impl.half_to_float

# The batch norm kernels for half-precision storage: the same names and arguments as the
# float32/float64 ones above, data passed as its 16-bit words (uint16 views).
HALF_KERNELS = ("plane_moments", "row_moments", "plane_infer", "row_infer",
                "plane_train_forward", "row_train_forward", "plane_backward", "row_backward")
HALF_KINDS = {"float16": 0, "bfloat16": 1}
_HALF_SETS = {
    name: types.SimpleNamespace(**{f: functools.partial(getattr(_impl, f + "_half"), kind=kind)
                                   for f in HALF_KERNELS})
    for name, kind in HALF_KINDS.items()}


def for_dtype(dtype):
    """The batch norm kernels for data of ``dtype``: this module for float32 and float64,
    the half-precision set for float16 and bfloat16."""
    return _HALF_SETS[dtype.name] if dtype.itemsize == 2 else sys.modules[__name__]
