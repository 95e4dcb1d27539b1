"""fastconv.gemm against the float64 NumPy reference, on every instruction-set path this CPU runs.

Shapes straddle each kernel's own register tile and cache blocks (read from the kernel table), so
partial tiles, several K blocks and several N blocks are all exercised.
"""
import numpy as np
import pytest

import fastconv
from conftest import CACHE_FITS
from fastconv import _C, reference

EPS32 = np.finfo(np.float32).eps


# The `isa` and `threads` fixtures come from conftest.py.


def operands(rng, m, k, n, trans_a=False, trans_b=False):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b


def assert_close(got, a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, bias=None,
                 activation=None):
    """Compare with the float64 reference; the bound grows like sqrt(K) * eps * (|alpha| |A| |B| + |beta C|)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out64 = None if out is None else out.astype(np.float64)
    bias64 = None if bias is None else bias.astype(np.float64)
    want = reference.gemm(a64, b64, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out64,
                          bias=bias64, activation=activation)
    scale = abs(alpha) * reference.gemm(np.abs(a64), np.abs(b64), trans_a=trans_a, trans_b=trans_b)
    if out is not None and beta != 0.0:
        scale += abs(beta) * np.abs(out64)
    if bias is not None:
        scale += np.abs(bias64)
    k = a.shape[0] if trans_a else a.shape[1]
    bound = 4 * np.sqrt(k + 1) * EPS32 * scale + 1e-30
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def blocking_shapes():
    """(m, k, n) around the active kernel's MR, NR, MC, KC, NC, plus tiny and prime shapes."""
    mr, nr, mc, kc, nc = _C.gemm_blocking()
    return sorted({
        (1, 1, 1), (2, 3, 1), (3, 1, 2), (1, 7, 3), (7, 13, 5), (17, 31, 29),
        (mr - 1, 5, nr - 1), (mr, 9, nr), (mr + 1, 11, nr + 1), (2 * mr + 3, 3, 3 * nr - 1),
        (mc - 1, 4, nr + 3), (mc + 1, 6, 2 * nr + 1), (mc + mr + 2, 3, 5 * nr + 7),
        (mr + 2, kc - 1, nr + 5), (5, kc, 7), (mr + 3, kc + 1, nr - 3), (3, 2 * kc + 5, 2 * nr + 1),
        (3, 5, nc + 1), (2, 3, nc + nr + 5),
    })


def test_blocking_is_the_kernel_table(isa):
    mr, nr, mc, kc, nc = _C.gemm_blocking()
    assert _C.gemm_kernel_name().startswith(isa) and f"{mr}x{nr}" in _C.gemm_kernel_name()
    assert mc % mr == 0 and nc % nr == 0 and kc > 0


def test_blocking_fits_each_cache(isa):
    """Properties the blocking must have on any CPU, checked on the caches of four real ones:
    the micro-kernel's tile (mr, nr, mc) is fixed; a larger L2 never gets a smaller K block; an AVX2
    B block kept in L2 takes at most half of it, in whole panels, unless at its 256-column floor."""
    fits = {}
    try:
        for name, caches in CACHE_FITS.items():
            _C.fit_gemm_blocking(*caches)
            fits[name] = _C.gemm_blocking()
    finally:
        _C.fit_gemm_blocking()
    table = _C.gemm_blocking()
    for name, (mr, nr, mc, kc, nc) in fits.items():
        l2_bytes = CACHE_FITS[name][0]
        assert (mr, nr, mc) == table[:3], name
        assert kc > 0 and nc % nr == 0 and nc > 0, name
        for other, (_, _, _, other_kc, _) in fits.items():
            if CACHE_FITS[other][0] > l2_bytes:
                assert other_kc >= kc, (name, other)
        if isa == "avx2":
            assert 4 * kc * nc <= l2_bytes // 2 or nc == 256, name


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_shapes_and_transposes(isa, cache_fit, trans_a, trans_b):
    rng = np.random.default_rng(1)
    for m, k, n in blocking_shapes():
        a, b = operands(rng, m, k, n, trans_a, trans_b)
        got = fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_close(got, a, b, trans_a=trans_a, trans_b=trans_b)


def test_wide_and_tall_row_major_a(isa, cache_fit):
    """Row-major A is read in place, or from a copy with a padded row stride when its rows are 4 KiB
    apart (they alias in L1) and the L1 has few ways (cache_fit) or N is 2048 or more: such strides
    with narrow, wide and very wide N, partial last panels, several row and K blocks, N wider than
    the narrow-N rule."""
    rng = np.random.default_rng(2)
    mr, nr, mc, kc, _ = _C.gemm_blocking()
    for m, k, n in [(3 * mr + 5, 1024, 10), (4 * mr - 1, 2048, 4 * nr), (200, 288, 64), (65, 129, 4 * nr + 1),
                    (3 * mr + 5, 1024, 300), (2 * mc + mr + 1, 2 * kc + 3, 9 * nr + 5), (mr - 1, 700, 257),
                    (2 * mc + mr + 1, 2048, 2 * nr + 3), (mr + 3, 1024, 2048 + nr + 5)]:
        a, b = operands(rng, m, k, n)
        assert_close(fastconv.gemm(a, b), a, b)


def test_trans_a_read_in_place_or_packed(isa, cache_fit):
    """A transposed A (a weight gradient's x^T) is read in place by columns when N is narrow, with its
    own K block, unless its columns are a multiple of 4 KiB apart (then packed): both, with several K
    blocks and a partial last panel."""
    rng = np.random.default_rng(12)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(1024, 300, 64), (2048, 33, 2 * nr), (1000, 300, 64), (3 * mr + 5, 2 * kc + 7, nr + 3)]:
        a, b = operands(rng, m, k, n, trans_a=True)
        assert_close(fastconv.gemm(a, b, trans_a=True), a, b, trans_a=True)


def test_row_major_b_in_place_for_short_m(isa):
    """A row-major B of whole NR panels is read in place when M is short: several K blocks, alpha/beta,
    bias and ReLU, a 4 KiB row stride (packed instead), and N with a partial last panel (packed)."""
    rng = np.random.default_rng(7)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(2 * mr + 3, 2 * kc + 5, 2 * nr), (1, 7, nr), (mr, 3, 1024), (50, 100, 3 * nr + 1)]:
        a, b = operands(rng, m, k, n)
        assert_close(fastconv.gemm(a, b), a, b)
        out = rng.standard_normal((m, n)).astype(np.float32)
        expected = 0.5 * (a.astype(np.float64) @ b) - out
        np.testing.assert_allclose(fastconv.gemm(a, b, alpha=0.5, beta=-1.0, out=out), expected,
                                   atol=1e-4 * np.sqrt(k) * max(1.0, np.abs(expected).max()))
    x = rng.standard_normal((9, 40)).astype(np.float32)
    w = rng.standard_normal((40, 2 * nr)).astype(np.float32)
    bias = rng.standard_normal(2 * nr).astype(np.float32)
    np.testing.assert_allclose(fastconv.gemm(x, w, bias=bias, activation="relu"),
                               np.maximum(x.astype(np.float64) @ w + bias, 0), atol=1e-4)


def offset_copy(array, offset_floats):
    """A C-contiguous copy of `array` starting `offset_floats` floats past a 64-byte boundary."""
    buffer = np.empty(array.size + 32, dtype=np.float32)
    start = (-buffer.ctypes.data // 4) % 16 + offset_floats
    view = buffer[start:start + array.size].reshape(array.shape)
    view[...] = array
    return view


@pytest.mark.parametrize("offset", [0, 1, 4, 12])
def test_b_rows_at_any_alignment(isa, threads, offset):
    """Whether a row-major B is read in place depends on its rows being 64-byte aligned, and on 2
    threads on the rows each thread takes: M on both sides of the aligned and misaligned limits, with
    B at each offset, on 1 and 2 threads, gives the same products."""
    rng = np.random.default_rng(11)
    _, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(111, 40, 2 * nr), (113, kc + 3, nr), (255, 40, 2 * nr), (257, kc + 3, nr), (639, 30, nr),
                    (643, 2 * kc + 1, 2 * nr), (1023, 9, nr), (1030, 5, nr)]:
        a, b = operands(rng, m, k, n)
        b = offset_copy(b, offset)
        assert b.ctypes.data % 64 == 4 * offset
        for count in (1, 2):
            threads(count)
            assert_close(fastconv.gemm(a, b), a, b)


def test_b_rows_on_few_l2_sets(isa, cache_fit):
    """A row-major B read in place whose row stride is a large power of two (a Dense layer of 512
    units: rows 2 KiB apart) gets K blocks short enough to keep its panel in the L2: long K, rows 3 KiB
    apart, alpha/beta, bias and ReLU, with short M (in place) and tall M (packed)."""
    rng = np.random.default_rng(13)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(mr + 1, 3 * kc + 5, 512), (100, 2000, 768), (3, 1100, 512), (1500, 700, 512)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        assert_close(fastconv.gemm(a, b), a, b)
        out = rng.standard_normal((m, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        expected = np.maximum(0.5 * (a.astype(np.float64) @ b) - out + bias, 0)
        np.testing.assert_allclose(fastconv.gemm(a, b, alpha=0.5, beta=-1.0, out=out, bias=bias, activation="relu"),
                                   expected, atol=1e-4 * np.sqrt(k) * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_row_padded_views(isa, threads, trans_a, trans_b):
    """Column slices of wider arrays (rows padded, x[:, :k]) and row slices of Fortran-ordered ones are
    passed with their row stride instead of being copied, and an out with padded rows is written in
    place without touching its padding: strides that are and are not multiples of 4 KiB, with
    alpha/beta, bias and ReLU, on 1 and 2 threads."""
    rng = np.random.default_rng(19)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n, pad in [(3 * mr + 2, kc + 9, 2 * nr + 3, 7), (200, 300, 3 * nr, 1024 - 300), (5, 40, 9, 1)]:
        a_ = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b_ = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        a_view = np.zeros((a_.shape[0], a_.shape[1] + pad), np.float32)[:, :a_.shape[1]]
        a_view[...] = a_
        b_view = np.asfortranarray(np.zeros((b_.shape[0] + pad, b_.shape[1]), np.float32))[:b_.shape[0]]
        b_view[...] = b_
        assert not a_view.flags.c_contiguous and not b_view.flags.f_contiguous
        op_a, op_b = (a_.T if trans_a else a_), (b_.T if trans_b else b_)
        out = rng.standard_normal((m, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        expected = np.maximum(1.5 * (op_a.astype(np.float64) @ op_b) - 0.5 * out + bias, 0)
        for count in (1, 2):
            threads(count)
            assert_close(fastconv.gemm(a_view, b_view, trans_a=trans_a, trans_b=trans_b),
                         np.ascontiguousarray(op_a), np.ascontiguousarray(op_b))
            wide = np.full((m, n + pad), 7.0, np.float32)  # out with padded rows: the padding keeps its values
            out_view = wide[:, :n]
            out_view[...] = out
            got = fastconv.gemm(a_view, b_view, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.5,
                                out=out_view, bias=bias, activation="relu")
            assert got is out_view
            np.testing.assert_allclose(got, expected, atol=1e-4 * np.sqrt(k) * max(1.0, np.abs(expected).max()))
            assert (wide[:, n:] == 7.0).all()


def test_non_contiguous_and_fortran_inputs(isa):
    rng = np.random.default_rng(3)
    a, b = operands(rng, 37, 45, 53)
    for a_view, b_view in [(np.asfortranarray(a), b), (a, np.asfortranarray(b)), (a[:, ::1], b[::1, :]),
                           (np.asfortranarray(a)[:, :40], b[:40, ::2])]:
        got = fastconv.gemm(a_view, b_view)
        assert_close(got, np.ascontiguousarray(a_view), np.ascontiguousarray(b_view))


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (-2.0, 1.0), (1.5, -0.25), (0.0, 2.0)])
def test_alpha_beta(isa, alpha, beta):
    rng = np.random.default_rng(4)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(2 * mr + 1, kc + 3, 2 * nr - 1), (5, 3, 7)]:
        a, b = operands(rng, m, k, n)
        out = rng.standard_normal((m, n)).astype(np.float32)
        before = out.copy()
        got = fastconv.gemm(a, b, alpha=alpha, beta=beta, out=out)
        assert got is out
        assert_close(got, a, b, alpha=alpha, beta=beta, out=before)


def test_beta_zero_does_not_read_out(isa):
    rng = np.random.default_rng(5)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(mr + 1, kc + 1, nr + 1), (3, 2, 5)]:
        a, b = operands(rng, m, k, n)
        out = np.full((m, n), np.nan, dtype=np.float32)
        fastconv.gemm(a, b, beta=0.0, out=out)
        assert np.isfinite(out).all()
        assert_close(out, a, b)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_bias_and_relu(isa, activation):
    rng = np.random.default_rng(6)
    mr, nr, _, kc, _ = _C.gemm_blocking()
    for m, k, n in [(2 * mr + 3, 2 * kc + 1, 2 * nr + 5), (mr - 1, 7, 10), (3, 5, 4 * nr + 1)]:
        a, b = operands(rng, m, k, n)
        bias = rng.standard_normal(n).astype(np.float32)
        got = fastconv.gemm(a, b, bias=bias, activation=activation)
        assert_close(got, a, b, bias=bias, activation=activation)
        out = rng.standard_normal((m, n)).astype(np.float32)
        before = out.copy()
        fastconv.gemm(a, b, alpha=0.5, beta=1.0, out=out, bias=bias, activation=activation)
        assert_close(out, a, b, alpha=0.5, beta=1.0, out=before, bias=bias, activation=activation)


def test_nan_propagates_through_relu(isa):
    a = np.ones((5, 3), dtype=np.float32)
    a[2, 1] = np.nan
    b = np.ones((3, 7), dtype=np.float32)
    got = fastconv.gemm(a, b, activation="relu")
    want = np.maximum(a @ b, 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[2]).all() and not np.isnan(np.delete(got, 2, axis=0)).any()


def test_out_validation():
    a = np.ones((4, 3), dtype=np.float32)
    b = np.ones((3, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="out must have shape"):
        fastconv.gemm(a, b, out=np.empty((5, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        fastconv.gemm(a, b, out=np.empty((4, 5), dtype=np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        fastconv.gemm(a, b, out=np.empty((5, 4), dtype=np.float32).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastconv.gemm(a, b, out=np.empty((4, 10), dtype=np.float32)[:, ::2])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fastconv.gemm(a, b, out=[[0.0] * 5] * 4)
    with pytest.raises(ValueError, match="inner dimensions"):
        fastconv.gemm(a, a)


def test_out_overlapping_an_input_is_rejected():
    buf = np.ones((6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="overlaps input a"):
        fastconv.gemm(buf, buf[:, :6], out=buf)
    square = np.ones((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="overlaps input b"):
        fastconv.gemm(np.ones((4, 4), dtype=np.float32), square, out=square)


def test_unusual_arguments_take_the_checked_path(isa):
    """Plain float32 matrices run straight from C; anything else is converted or refused as before:
    byte-swapped float32, an int alpha, a read-only out, an out overlapping an input by a few bytes."""
    rng = np.random.default_rng(11)
    a, b = operands(rng, 9, 7, 5)
    swapped_a, swapped_b = a.astype(">f4"), b.astype(">f4")
    assert_close(fastconv.gemm(swapped_a, swapped_b), a, b)
    np.testing.assert_allclose(fastconv.gemm(a, b, alpha=2), 2 * (a.astype(np.float64) @ b), rtol=1e-5, atol=1e-5)
    read_only = np.zeros((9, 5), dtype=np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fastconv.gemm(a, b, out=read_only)
    buf = np.zeros(9 * 7 + 9 * 5 - 1, dtype=np.float32)
    a_view = buf[:63].reshape(9, 7)
    a_view[...] = a
    with pytest.raises(ValueError, match="overlaps input a"):
        fastconv.gemm(a_view, b, out=buf[62:].reshape(9, 5))


def test_deterministic_across_thread_counts(isa, threads):
    """K is never split: 1 and 2 threads give bitwise identical results, also for small-M plans."""
    rng = np.random.default_rng(7)
    mr, nr, mc, kc, _ = _C.gemm_blocking()
    shapes = [(3 * mc + 5, 2 * kc + 3, 3 * nr + 1), (mr + 3, 3 * kc, 8 * nr + 3), (64, 1000, 128), (300, 288, 64)]
    for m, k, n in shapes:
        for trans_a in (False, True):
            a, b = operands(rng, m, k, n, trans_a)
            bias = rng.standard_normal(n).astype(np.float32)
            results = []
            for count in (1, 2):
                threads(count)
                results.append(fastconv.gemm(a, b, trans_a=trans_a, bias=bias, activation="relu"))
            np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("trans_b", [False, True])
def test_wide_c_split_into_column_groups(isa, threads, trans_b):
    """A C at least as wide as tall is cut into one column group per thread, each packing its own B
    panels with no barrier: 2 and 3 threads (more groups than panels on the last NC block, K in
    several chunks of unequal size, partial panels, B packed or read in place) match the reference and
    1 thread bit for bit, call after call (a thread overwriting another's panel showed as a race)."""
    rng = np.random.default_rng(17)
    mr, nr, mc, kc, nc = _C.gemm_blocking()
    shapes = [(mr + 3, 2 * kc + 3, 3 * nr + 5), (200, kc + 7, 5 * nr), (2 * mc + 1, 300, nc + nr + 1),
              (64, 50, 2 * nr), (189, kc + 53, 87 * nr - 12)]
    for m, k, n in shapes:
        a, b = operands(rng, m, k, n, trans_b=trans_b)
        threads(1)
        single = fastconv.gemm(a, b, trans_b=trans_b)
        assert_close(single, a, b, trans_b=trans_b)
        for count in (2, 3):
            threads(count)
            for _ in range(5):
                np.testing.assert_array_equal(fastconv.gemm(a, b, trans_b=trans_b), single)


def test_fma_peak_runs_every_available_isa():
    for name in fastconv.available_isas():
        assert _C.fma_peak(name, 1000, 1) > 0
    assert _C.fma_peak(None, 10, 1) > 0
