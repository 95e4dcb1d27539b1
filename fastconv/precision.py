"""Mixed precision in the engine: which GEMM kernel a bfloat16 compute dtype runs, and the scope in
which the calling thread's ops compute in it.

Inside `compute_precision("bfloat16")`, every GEMM of the calling thread (Dense layers, and the
im2col, implicit-GEMM and forced-Winograd paths of conv2d, forward and backward) rounds its inputs to
bfloat16 (round to nearest even, as VCVTNEPS2BF16) and sums the products in float32, on:

* the AVX512_BF16 micro-kernel (VDPBF16PS) where the CPU has AVX512_BF16 (AMD Zen 4 and later, Intel
  Cooper Lake, Sapphire Rapids and later) and the AVX-512 path is in use;
* else the float32 kernels: such a CPU has no faster bf16 arithmetic, and fastconv says so once (a
  RuntimeWarning) rather than emulating it slowly;
* or, forced with `set_bf16_kernel("portable")` or FASTCONV_BF16_KERNEL=portable, a portable C kernel
  with the exact arithmetic of VDPBF16PS (bf16 products exact in float32, each pair's two products
  added high element first, each sum rounded to nearest even, subnormals flushed to zero): the results
  the AVX512_BF16 kernel gives, on any CPU, several times slower than float32.

Inputs, outputs, weights and gradients stay float32 arrays; the few-channel direct convolution
kernels, pooling, normalisation and the elementwise kernels compute in float32 under either.
float16 has no CPU kernels here: "float16" computes in float32 and says so once.
"""
import contextlib
import os
import threading
import warnings

from fastconv import _C

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
BF16_KERNEL_MODES = ("auto", "portable")

_warned = set()
_warn_lock = threading.Lock()


def bf16_kernel():
    """The GEMM micro-kernel a bfloat16 compute dtype runs now ("avx512_bf16_14x32",
    "generic_bf16_4x16"), or None when it runs the float32 kernels (no AVX512_BF16)."""
    return _C.bf16_kernel_name()


def set_bf16_kernel(mode):
    """"auto" (the AVX512_BF16 kernel where the CPU has it, else float32) or "portable" (the portable
    kernel with VDPBF16PS's arithmetic, on any CPU). Process-wide, like set_isa."""
    if mode not in BF16_KERNEL_MODES or not _C.set_bf16_kernel(mode):
        raise ValueError(f"mode must be one of {', '.join(BF16_KERNEL_MODES)}, got {mode!r}")


def cpu_has_avx512_bf16():
    """Whether this CPU and OS run AVX512_BF16 (CPUID leaf 7 subleaf 1 EAX bit 5, AVX-512 state saved)."""
    return _C.cpu_has_avx512_bf16()


def _warn_once(key, message):
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def compute_precision(dtype):
    """Within this block, the calling thread's GEMMs compute in `dtype` ("float32", "bfloat16", or
    "float16", which computes in float32); see the module docstring."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
    if dtype == "bfloat16" and _C.bf16_kernel_name() is None:
        _warn_once("bfloat16", "this CPU has no AVX512_BF16 (CPUID leaf 7 subleaf 1 EAX bit 5) or is not on the "
                               "AVX-512 path: layers with a bfloat16 compute dtype run the float32 kernels")
    elif dtype == "float16":
        _warn_once("float16", "fastconv has no float16 kernels on the CPU: layers with a float16 compute dtype "
                              "(mixed_float16) compute in float32; weights stay float32 as the policy asks")
    previous = _C.set_thread_precision(1 if dtype == "bfloat16" else 0)
    try:
        yield
    finally:
        _C.set_thread_precision(previous)


def _check_environment():
    mode = os.environ.get("FASTCONV_BF16_KERNEL")
    if mode is not None and mode not in BF16_KERNEL_MODES:
        warnings.warn(f"FASTCONV_BF16_KERNEL={mode!r} is not one of {', '.join(BF16_KERNEL_MODES)}; using auto",
                      RuntimeWarning)


_check_environment()
