"""bfloat16 in NumPy, as the AVX512_BF16 instructions define it: the rounding of VCVTNEPS2BF16 and the
arithmetic of VDPBF16PS, the models tests/test_bf16.py and tests/test_emulated_avx512.py hold the kernels to."""
import numpy as np


def bf16_bits(x):
    """float32 -> bfloat16 bits by NumPy bit manipulation, as VCVTNEPS2BF16 rounds: nearest, ties to
    even; NaN quiet; subnormals to a zero of their sign."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    nan = ((u & 0x7F800000) == 0x7F800000) & ((u & 0x7FFFFF) != 0)
    rounded[nan] = (u[nan] >> 16) | 0x40
    subnormal = (u & 0x7F800000) == 0
    rounded[subnormal] = (u[subnormal] >> 16) & 0x8000
    return rounded.astype(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def rounded(x):
    """x rounded to bfloat16, as float64."""
    return bf16_values(bf16_bits(x)).astype(np.float64)


def emulate_vdpbf16ps(a, b):
    """A @ B with VDPBF16PS's arithmetic in NumPy float32: per pair (2p, 2p+1), acc += a_hi * b_hi, then
    acc += a_lo * b_lo, each product exact and each sum rounded; subnormal sums flushed to zero."""
    a, b = bf16_values(bf16_bits(a)), bf16_values(bf16_bits(b))
    k = a.shape[1]
    if k % 2:
        a = np.concatenate([a, np.zeros((a.shape[0], 1), np.float32)], axis=1)
        b = np.concatenate([b, np.zeros((1, b.shape[1]), np.float32)])
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf and 0 * Inf are NaN, as in the kernel
        for p in range(0, a.shape[1], 2):
            for q in (p + 1, p):
                acc = acc + np.outer(a[:, q], b[q])
                acc = np.where(np.abs(acc) < tiny, np.copysign(np.float32(0), acc), acc).astype(np.float32)
    return acc
