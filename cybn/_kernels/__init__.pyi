# Type stub of cybn._kernels: the instruction-set dispatcher and the compiled kernels it
# re-exports (common/stats/apply/grad/fastpath.pxi, one module per instruction set).
# Arrays are C-contiguous; "data" arrays are float32 or float64 (all of one call the same);
# per-channel arrays are float64. for_dtype(dtype) gives the batch norm kernels for a dtype:
# this module, or for float16/bfloat16 the same names taking uint16 views.
# Private API: argument checks happen in cybn.ops.
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
Data = NDArray[np.float32] | NDArray[np.float64]

ISA: str
EP_RESIDUAL: int
EP_RELU: int
OPENMP_ENABLED: bool
FAST_PLANE_RULE: tuple[int, int]

def cpu_features() -> dict[str, bool]: ...
def supported(isa: str, features: dict[str, bool] | None = ...) -> bool: ...
def available_variants() -> list[str]: ...
def load_variant(isa: str) -> ModuleType: ...
def select_variant() -> ModuleType: ...

# plane family: x viewed as (outer, C, inner); group 0 = each thread owns whole channels,
# else channels per cooperative group
def plane_moments(x: Data, mean: F64, m2: F64, num_threads: int) -> None: ...
# ep: fused epilogue bits EP_RESIDUAL | EP_RELU (0: plain); residual has x's shape (pass x
# when unused); the backward recomputes the ReLU mask from fscale (weight * invstd) and
# foffset (bias) and, with EP_RESIDUAL, writes the masked dy into dres
def plane_infer(x: Data, shift: F64, scale: F64, offset: F64, y: Data, residual: Data, ep: int,
                streaming: bool, num_threads: int) -> None: ...
def plane_train_forward(x: Data, weight: F64, bias: F64, eps: float, y: Data, residual: Data,
                        ep: int, mean: F64, var: F64, invstd: F64, group: int,
                        streaming: bool, num_threads: int) -> None: ...
def plane_backward(dy: Data, x: Data, mean: F64, invstd: F64, weight: F64, training: bool,
                   dx: Data, ep: int, residual: Data, dres: Data, fscale: F64, foffset: F64,
                   sum_dy: F64, sum_dy_xmu: F64, group: int, streaming: bool,
                   num_threads: int) -> None: ...

# row family: x viewed as (rows, L), column j of channel (j // inner) % C
def row_moments(x: Data, C: int, inner: int, mean: F64, m2: F64, num_threads: int) -> None: ...
def row_infer(x: Data, C: int, inner: int, shift: F64, scale: F64, offset: F64, y: Data,
              residual: Data, ep: int, streaming: bool, num_threads: int) -> None: ...
def row_train_forward(x: Data, C: int, inner: int, weight: F64, bias: F64, eps: float,
                      y: Data, residual: Data, ep: int, mean: F64, var: F64, invstd: F64,
                      streaming: bool, num_threads: int) -> None: ...
def row_backward(dy: Data, x: Data, C: int, inner: int, mean: F64, invstd: F64, weight: F64,
                 training: bool, dx: Data, ep: int, residual: Data, dres: Data, fscale: F64,
                 foffset: F64, sum_dy: F64, sum_dy_xmu: F64, streaming: bool,
                 num_threads: int) -> None: ...

# samples: array (rows, size), a row viewed as (outer, C, inner) of one family, groups of
# C // groups channels; weight (Cw,) with channel c using c % Cw; (rows, groups) statistics
def sample_group_forward(x: Data, outer: int, C: int, inner: int, k: int, plane: bool,
                         groups: int, weight: F64, bias: F64, eps: float, y: Data, mean: F64,
                         var: F64, invstd: F64, streaming: bool, num_threads: int) -> None: ...
def sample_group_backward(dy: Data, x: Data, outer: int, C: int, inner: int, k: int,
                          plane: bool, groups: int, mean: F64, invstd: F64, weight: F64,
                          dx: Data, sum_dy: F64, sum_dy_xmu: F64, streaming: bool,
                          num_threads: int) -> None: ...

# rows: x (M, D) normalized per row, affine per column (layer norm, RMS norm)
def rows_affine(x: Data, shift: F64, scale: F64, weight: F64, bias: F64, y: Data,
                num_threads: int) -> None: ...
def rows_backward(dy: Data, x: Data, mean: F64, invstd: F64, weight: F64, centered: bool,
                  dx: Data, dweight: F64, dbias: F64, num_threads: int) -> None: ...

# groups: channels-first group norm, x (N * G, Cg * S), a thread per group
def group_train_forward(x: Data, S: int, weight: F64, bias: F64, eps: float, y: Data,
                        mean: F64, var: F64, invstd: F64, streaming: bool,
                        num_threads: int) -> None: ...
def group_backward(dy: Data, x: Data, S: int, mean: F64, invstd: F64, weight: F64, dx: Data,
                   sum_dy: F64, sum_dy_xmu: F64, streaming: bool, num_threads: int) -> None: ...

# depthwise convolution, channels-last: x (N, H, W, C), weight (kh, kw, C), zero padding
def depthwise_forward(x: Data, weight: Data, bias: Data, sh: int, sw: int, ph: int, pw: int,
                      dh: int, dw: int, y: Data, num_threads: int) -> None: ...
def depthwise_backward(x: Data, weight: Data, dy: Data, sh: int, sw: int, ph: int, pw: int,
                       dh: int, dw: int, dx: Data, dweight: F64, num_threads: int) -> None: ...
# channels-first: planes x (N * C, H, W), weight (C, kh, kw)
def depthwise_forward_planes(x: Data, weight: Data, bias: Data, sh: int, sw: int, ph: int,
                             pw: int, dh: int, dw: int, y: Data, num_threads: int) -> None: ...
def depthwise_backward_planes(x: Data, weight: Data, dy: Data, sh: int, sw: int, ph: int,
                              pw: int, dh: int, dw: int, dx: Data, dweight: F64,
                              num_threads: int) -> None: ...

# small arrays on the calling thread; None means "take the full path"
def fast_infer(x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: Any,
               axis: Any, out: Any, max_size: int, relu: bool = ...) -> Data | None: ...
def fast_train(x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any,
               momentum: Any, eps: Any, axis: Any, out: Any, max_size: int,
               relu: bool = ...) -> tuple[Data, F64, F64] | None: ...
def fast_backward(dy: Any, x: Any, weight: Any, mean: Any, invstd: Any, training: Any,
                  axis: Any, out: Any, max_size: int) -> tuple[Data, Data, Data] | None: ...

def update_running(running: NDArray[np.float32] | F64, batch: F64, momentum: float,
                   factor: float) -> None: ...
def infer_scale(running_var: F64, weight: F64, eps: float, scale: F64) -> None: ...
def grad_coefficients_array(count: float, sum_dy: F64, sum_dy_xmu: F64, invstd: F64,
                            weight: F64, training: bool, k1: F64, k2: F64, k3: F64) -> None: ...
def train_coefficients_array(count: float, m2: F64, eps: float, weight: F64, var: F64,
                             invstd: F64, scale: F64) -> None: ...
def parallel_copy(src: Data, dst: Data, num_threads: int) -> None: ...

# half-precision storage: float16 (kind 0) and bfloat16 (kind 1) as 16-bit words
HALF_KERNELS: tuple[str, ...]
HALF_KINDS: dict[str, int]
def half_from_float(src: NDArray[np.float32], dst: NDArray[np.uint16], kind: int) -> None: ...
def half_to_float(src: NDArray[np.uint16], dst: NDArray[np.float32], kind: int) -> None: ...
def for_dtype(dtype: np.dtype) -> Any: ...
