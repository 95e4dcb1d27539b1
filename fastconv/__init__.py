"""fastconv: a C-accelerated CPU engine for training image CNNs from Python.

Low-level ops (float32, NHWC images, Keras weight layout): gemm, conv2d, conv2d_backward,
conv2d_transpose, maxpool2d, maxpool2d_backward, avgpool2d, avgpool2d_backward. `fastconv.reference` holds the same
ops in pure NumPy. `fastconv.keras` is a Keras-style model API on top.
"""
import operator
import os
import warnings

# OpenMP's wait policy, only where the user set none (README, "Environment variables"); read when the
# OpenMP runtime loads, so set before _C is imported. Threads that finish a parallel region sleep rather
# than spin, so a core another process needs is not taken from it (docs/perf-log.md has the cost)...
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # ...after a short spin: a GEMM meets its threads at a few barriers per call, and waking a sleeping
    # thread at each made small products slower on 2 threads than on 1. Not under a policy the user
    # chose: a GOMP_SPINCOUNT of ours would cut OMP_WAIT_POLICY=active's spin short.
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")

from fastconv import _C  # noqa: E402
from fastconv.ops import (  # noqa: E402
    CONV_ALGORITHMS, avgpool2d, avgpool2d_backward, conv2d, conv2d_algorithm, conv2d_backward, conv2d_transpose,
    conv2d_workspace_bytes, gemm,
    get_num_threads, global_avgpool2d, global_avgpool2d_backward, maxpool2d, maxpool2d_backward,
    set_num_threads, relu_backward, dropout, adam_update, adadelta_update, rmsprop_update, sgd_update, batch_norm,
    batch_norm_backward,
)

__version__ = "0.1.0"
__all__ = [
    "CONV_ALGORITHMS", "adadelta_update", "adam_update", "available_isas", "avgpool2d", "avgpool2d_backward",
    "batch_norm", "batch_norm_backward", "config", "conv2d", "conv2d_algorithm", "conv2d_backward",
    "conv2d_transpose", "conv2d_workspace_bytes", "dropout", "gemm", "get_isa", "get_num_threads",
    "global_avgpool2d", "global_avgpool2d_backward", "maxpool2d", "maxpool2d_backward", "release_workspace",
    "relu_backward", "rmsprop_update", "set_isa", "set_num_threads", "set_workspace_limit", "sgd_update",
    "show_config", "workspace_bytes",
]

ISAS = tuple(reversed(_C.isa_names()))  # best first: this build's sets, from csrc/isa_list.h


def available_isas():
    """The instruction-set paths this CPU and OS can run, best first."""
    return [name for name in ISAS if _C.isa_supported(name)]


def set_isa(name):
    """Force the kernels of one instruction set ("avx512", "avx2" or "generic") for this process.

    Safe while other threads run kernels: each call takes the instruction set once, when it starts, and
    sizes and runs everything with that one; calls that start after set_isa returns use the new one."""
    if name not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {name!r}")
    if not _C.set_isa(name):
        raise ValueError(f"isa {name!r} is not supported by this CPU; available: {', '.join(available_isas())}")


def get_isa():
    """The instruction-set path in use."""
    return _C.isa_name()


def release_workspace():
    """Free the cached scratch memory of every thread that is not inside a kernel call now; returns the
    bytes freed. Each calling thread keeps its scratch buffers for its next call while all of them
    together hold at most the limit (set_workspace_limit, 64 MiB by default); a call that ends above it
    frees its thread's. So one large call does not hold its memory for the life of the process, and this
    returns the rest (for instance before forking workers, or after the last large call)."""
    return _C.release_workspace()


def workspace_bytes():
    """Bytes of scratch memory all threads hold now (in use by calls, or cached for their next)."""
    return _C.workspace_stats()[0]


def set_workspace_limit(nbytes):
    """Cache at most `nbytes` of scratch memory across calls (default 64 MiB; 0 frees every call's
    scratch when it ends). A call's own need is not limited: see conv2d_workspace_bytes."""
    try:
        value = None if isinstance(nbytes, bool) else operator.index(nbytes)
    except TypeError:
        value = None
    if value is None or value < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    _C.set_workspace_limit(min(value, 2**62))


def config():
    """The build and run-time configuration, as a dict."""
    isa = get_isa()
    return {
        "version": __version__,
        "isa": isa,
        "isas_available": available_isas(),
        "kernels": {
            "gemm": _C.gemm_kernel_name(),
            "conv2d": (f"{os.environ.get('FASTCONV_CONV_ALGO', 'auto')}: {_C.conv_direct_kernel_name()} for "
                       f"cin<=4; else implicit gemm (stride 1) or im2col+gemm ({_C.gemm_kernel_name()}); 1x1: gemm"),
            "conv2d_direct": _C.conv_direct_kernel_name(),
            # What a bfloat16 compute dtype (mixed_bfloat16) runs: fastconv.precision.
            "gemm_bf16": _C.bf16_kernel_name() or "float32 kernels (no AVX512_BF16)",
            "maxpool2d": f"direct nhwc ({isa})",
            "avgpool2d": f"direct nhwc ({isa})",
        },
        "openmp": _C.openmp_enabled(),
        "num_threads": get_num_threads(),
        "compiler": _C.compiler(),
        "keeps_freed_memory": _KEEPS_FREED_MEMORY,
        "workspace_limit": _C.workspace_stats()[2],
    }


def show_config():
    """Print the configuration: version, ISA chosen and available, kernels, OpenMP, threads, compiler."""
    for key, value in config().items():
        if isinstance(value, dict):
            print(f"{key}:")
            for op, kernel in value.items():
                print(f"  {op:<10} {kernel}")
        else:
            print(f"{key + ':':<16}{', '.join(value) if isinstance(value, list) else value}")


# The user's own glibc malloc settings, which fastconv then leaves alone.
_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def _keep_freed_memory():
    """Let glibc reuse freed pages for the arrays every training step allocates, which it would otherwise
    return to the OS and page-fault in again each step. Not when FASTCONV_KEEP_FREED_MEMORY=0, nor when
    the user set glibc's thresholds (MALLOC_*_THRESHOLD_, GLIBC_TUNABLES)."""
    if os.environ.get("FASTCONV_KEEP_FREED_MEMORY", "1") == "0":
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in _MALLOC_ENVIRONMENT) or any(name in tunables for name in _MALLOC_TUNABLES):
        return False
    return _C.keep_freed_memory(256 * 2**20)


def _check_isa_environment():
    forced = os.environ.get("FASTCONV_ISA")
    if forced is None:
        return
    if forced not in ISAS:
        warnings.warn(f"FASTCONV_ISA={forced!r} is not one of {', '.join(ISAS)}; using {get_isa()}", RuntimeWarning)
    elif forced != get_isa():
        warnings.warn(f"FASTCONV_ISA={forced!r} is not supported by this CPU; using {get_isa()}", RuntimeWarning)


_check_isa_environment()
_KEEPS_FREED_MEMORY = _keep_freed_memory()


def __getattr__(name):
    # The autodiff API lives with keras.ops; importing it lazily keeps `import fastconv` light.
    if name in ("GradientTape", "value_and_grad"):
        from fastconv.keras import autodiff
        return getattr(autodiff, name)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
