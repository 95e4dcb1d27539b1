"""The bfloat16 GEMM: float32 -> bf16 rounding against NumPy bit manipulation, and the packed bf16 GEMM
(Dense and conv paths) against float64 on bf16-rounded inputs, on the portable kernel that has
VDPBF16PS's arithmetic (the AVX512_BF16 kernel runs only on CPUs with that feature; its code is
tested on emulated intrinsics in tests/test_emulated_avx512.py)."""
import numpy as np
import pytest

import fastconv
from fastconv import _C, precision, reference

from bf16_model import bf16_bits, bf16_values, emulate_vdpbf16ps, rounded


def engine_bits(x):
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(x.size, dtype=np.uint16)
    _C.bf16_from_floats(x, out)
    return out


@pytest.fixture
def portable_bf16():
    """The portable bf16 kernel for the test, whatever the CPU; back to "auto" afterwards."""
    precision.set_bf16_kernel("portable")
    yield
    precision.set_bf16_kernel("auto")


def test_rounding_matches_bit_manipulation_on_every_kind_of_value(rng):
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFF812345, 0x00000001,
                        0x807FFFFF, 0x00400000, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F808000, 0x3F818000,
                        0x3F807FFF, 0x3F808001, 0x3F800000], dtype=np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    assert np.array_equal(engine_bits(x), bf16_bits(x))


def test_rounding_is_to_nearest_ties_to_even_by_value(rng):
    """An oracle that does not use the rounding trick: the nearer of the two bf16 neighbours in float64,
    the even one on a tie."""
    x = np.concatenate([rng.standard_normal(50_000), rng.uniform(-1e30, 1e30, 1000)]).astype(np.float32)
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000) + 0x3F800000  # exactly half-way
    x = np.concatenate([x, ties.view(np.float32)])
    u = x.view(np.uint32)
    down = (u & 0xFFFF0000).view(np.float32).astype(np.float64)
    up = ((u & 0xFFFF0000) + 0x10000).view(np.float32).astype(np.float64)
    xd = x.astype(np.float64)
    d_down, d_up = np.abs(xd - down), np.abs(up - xd)
    even_down = ((u >> 16) & 1) == 0
    expected = np.where((d_down < d_up) | ((d_down == d_up) & even_down), down, up)
    assert np.array_equal(bf16_values(engine_bits(x)).astype(np.float64), expected)


def test_rounding_special_values():
    cases = {0x3F808000: 0x3F80,  # 1 + 2^-8, a tie: to the even 1.0
             0x3F818000: 0x3F82,  # a tie with an odd lower neighbour: up
             0x7F7FFFFF: 0x7F80,  # the largest float rounds to infinity
             0x7F800000: 0x7F80, 0xFF800000: 0xFF80,  # infinities stay
             0x7F800001: 0x7FC0, 0xFF800001: 0xFFC0,  # signalling NaNs come out quiet, sign kept
             0x00000001: 0x0000, 0x807FFFFF: 0x8000,  # subnormals: zero of their sign
             0x00800000: 0x0080}  # the smallest normal stays
    x = np.array(list(cases), dtype=np.uint32).view(np.float32)
    assert [hex(v) for v in engine_bits(x)] == [hex(v) for v in cases.values()]


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (3, 5, 2), (4, 16, 7), (5, 17, 33), (9, 40, 128), (2, 3, 255)])
def test_portable_kernel_is_vdpbf16ps_bit_for_bit(portable_bf16, rng, m, n, k):
    """Within one K block (K <= the kernel's 256), every element of C is one accumulator's sums."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    with precision.compute_precision("bfloat16"):
        c = fastconv.gemm(a, b)
    assert np.array_equal(c, emulate_vdpbf16ps(a, b))


def gemm_bound(a, b, k):
    """|C - rounded(A) @ rounded(B)| for float32 sums of exact products: k roundings of 2^-24 each of
    the running sum, at most sum |a||b|."""
    return 2.0 * k * 2.0**-24 * (np.abs(rounded(a)) @ np.abs(rounded(b))) + 1e-30


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (7, 9, 3), (13, 33, 257), (37, 70, 129), (64, 10, 784),
                                     (130, 300, 65), (4, 520, 31)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_bf16_gemm_against_float64_of_rounded_inputs(portable_bf16, rng, m, n, k, trans_a, trans_b):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    with precision.compute_precision("bfloat16"):
        c = fastconv.gemm(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b, trans_a=trans_a,
                          trans_b=trans_b, bias=bias, activation="relu")
    exact = np.maximum(rounded(a) @ rounded(b) + bias, 0)
    assert np.all(np.abs(c - exact) <= gemm_bound(a, b, k) + 1e-6 * np.abs(bias))
    if k >= 3:  # the bf16 path ran: float32 inputs would have given a result this far from rounded ones
        float32 = np.maximum(a.astype(np.float64) @ b + bias, 0)
        assert np.abs(c - exact).max() < np.abs(float32 - exact).max()


def test_scope_is_per_thread_and_restored(portable_bf16, rng):
    a, b = rng.standard_normal((6, 40)).astype(np.float32), rng.standard_normal((40, 20)).astype(np.float32)
    plain = fastconv.gemm(a, b)
    with precision.compute_precision("bfloat16"):
        in_scope = fastconv.gemm(a, b)
        import threading
        other = {}
        thread = threading.Thread(target=lambda: other.setdefault("c", fastconv.gemm(a, b)))
        thread.start()
        thread.join()
    assert np.array_equal(fastconv.gemm(a, b), plain) and np.array_equal(other["c"], plain)
    assert not np.array_equal(in_scope, plain)


def conv_bound(x, w, ref_abs, k):
    return 2.0 * k * 2.0**-24 * ref_abs + 1e-30


@pytest.mark.parametrize("shape, kernel, strides, padding, algorithm", [
    ((2, 9, 11, 6), (3, 3, 6, 10), 1, "same", "implicit"),     # implicit GEMM, odd sizes
    ((2, 9, 11, 6), (3, 3, 6, 10), 1, "same", "auto"),
    ((3, 10, 7, 5), (3, 2, 5, 17), 2, "valid", "im2col"),      # strided: im2col + GEMM
    ((1, 1, 1, 7), (1, 1, 7, 33), 1, "valid", "auto"),         # 1-pixel image: one GEMM
])
def test_bf16_conv_forward_and_backward_against_float64(portable_bf16, rng, shape, kernel, strides, padding,
                                                        algorithm):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    b = rng.standard_normal(kernel[-1]).astype(np.float32)
    opts = dict(strides=strides, padding=padding)
    with precision.compute_precision("bfloat16"):
        y = fastconv.conv2d(x, w, b, algorithm=algorithm, **opts)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, **opts)
    xr, wr, dyr = rounded(x), rounded(w), rounded(dy)
    k = kernel[0] * kernel[1] * kernel[2]
    ref = reference.conv2d(xr, wr, b.astype(np.float64), **opts)
    ref_abs = reference.conv2d(np.abs(xr), np.abs(wr), None, **opts)
    assert np.all(np.abs(y - ref) <= conv_bound(x, w, ref_abs, k) + 1e-6 * np.abs(b))
    float32_y = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **opts)
    assert np.abs(y - ref).max() < np.abs(float32_y - ref).max()  # rounded inputs, not float32 ones
    rdx, rdw, rdb = reference.conv2d_backward(dyr, xr, wr, **opts)
    adx, adw, _ = reference.conv2d_backward(np.abs(dyr), np.abs(xr), np.abs(wr), **opts)
    assert np.all(np.abs(dx - rdx) <= 2.0 * kernel[0] * kernel[1] * kernel[3] * 2.0**-24 * adx + 1e-30)
    n_rows = y.shape[0] * y.shape[1] * y.shape[2]
    assert np.all(np.abs(dw - rdw) <= 2.0 * n_rows * 2.0**-24 * adw + 1e-30)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-4)


def test_without_a_bf16_kernel_the_scope_runs_float32_and_says_so_once(rng, monkeypatch):
    if precision.bf16_kernel() is not None:
        pytest.skip("this CPU runs an AVX512_BF16 kernel")  # the fallback exists only without one
    monkeypatch.setattr(precision, "_warned", set())
    a, b = rng.standard_normal((6, 40)).astype(np.float32), rng.standard_normal((40, 20)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="AVX512_BF16"):
        with precision.compute_precision("bfloat16"):
            c = fastconv.gemm(a, b)
    assert np.array_equal(c, fastconv.gemm(a, b))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with precision.compute_precision("bfloat16"):
            pass


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        precision.set_bf16_kernel("fast")
    with pytest.raises(ValueError, match="dtype"):
        with precision.compute_precision("int8"):
            pass
    assert isinstance(precision.cpu_has_avx512_bf16(), bool)


@pytest.mark.parametrize("algorithm", ["winograd", "winograd4x4"])
def test_winograd_keeps_float32_under_bf16(portable_bf16, rng, algorithm):
    """Its transformed tiles rounded to bf16 would cost several times the other paths' error."""
    x = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    plain = fastconv.conv2d(x, w, padding="same", algorithm=algorithm)
    plain_grads = fastconv.conv2d_backward(dy, x, w, padding="same", algorithm=algorithm)
    with precision.compute_precision("bfloat16"):
        assert np.array_equal(fastconv.conv2d(x, w, padding="same", algorithm=algorithm), plain)
        grads = fastconv.conv2d_backward(dy, x, w, padding="same", algorithm=algorithm)
    assert all(np.array_equal(g, p) for g, p in zip(grads, plain_grads))  # dx, and Winograd's dw


def test_subnormal_sums_are_flushed_to_a_signed_zero(portable_bf16):
    """VDPBF16PS flushes subnormal results: sums below 2^-126 come out as zeros of their sign."""
    a = np.array([[1e-20, 1e-20], [-1e-20, 1e-20], [1e-20, 1e-20], [2e-19, 2e-19]], dtype=np.float32)
    b = np.array([[1e-19] * 3 + [1e-19], [1e-19] * 4], dtype=np.float32)
    with precision.compute_precision("bfloat16"):
        c = fastconv.gemm(a, b)
    assert np.all(c[:3] == 0) and not np.any(np.signbit(c[0]))
    assert np.all(c[3] > 0)  # products of 2e-38 are normal: kept
    assert np.array_equal(c, emulate_vdpbf16ps(a, b))
    with precision.compute_precision("bfloat16"):
        neg = fastconv.gemm(-a[:1], b)
    assert np.all(neg == 0) and np.all(np.signbit(neg))
