"""The elementwise training kernels (ReLU gradient, dropout, optimizer updates) against fastconv.reference."""
import numpy as np
import pytest

import fastconv
from fastconv import reference


def test_relu_backward_matches_reference_and_keeps_nan(rng):
    dy = rng.standard_normal((3, 7, 5, 33)).astype(np.float32)
    y = np.maximum(rng.standard_normal(dy.shape), 0).astype(np.float32)
    dy[0, 0, 0, 0] = np.nan
    y[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(fastconv.relu_backward(dy, y), reference.relu_backward(dy, y))
    in_place = dy.copy()
    assert fastconv.relu_backward(in_place, y, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, reference.relu_backward(dy, y))


@pytest.mark.parametrize("size", [1, 17, 100_003])
def test_optimizer_updates_match_reference(rng, size):
    g = rng.standard_normal(size).astype(np.float32)
    w, m, v = (rng.standard_normal(size).astype(np.float32) for _ in range(3))
    v = np.abs(v)
    expected = [a.astype(np.float64) for a in (w, m, v)]
    reference.adam_update(*expected[:1], g.astype(np.float64), *expected[1:], 1e-3, 0.9, 0.999, 1e-7)
    fastconv.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-7)
    for got, want in zip((w, m, v), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    w, acc_g, acc_d = rng.standard_normal(size).astype(np.float32), np.abs(g), np.abs(g) / 2
    expected = [a.astype(np.float64) for a in (w, acc_g, acc_d)]
    reference.adadelta_update(expected[0], g.astype(np.float64), expected[1], expected[2], 1.0, 0.95, 1e-7)
    fastconv.adadelta_update(w, g, acc_g, acc_d, 1.0, 0.95, 1e-7)
    for got, want in zip((w, acc_g, acc_d), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# 250_007 floats are split over 2 threads (fewer than 125_000 stay on one: fc_threads_for_values).
STATE_SIZES = [1, 17, 100_003, 250_007]


def _steps_match_reference(update, reference_update, w, grads, slots, *args, **kwargs):
    """Runs update (fastconv) on the float32 w and slots and reference_update on float64 copies, one
    call a gradient, passing the slots by keyword (None stays None), then compares every array."""
    expected_w = w.astype(np.float64)
    expected_slots = {name: None if a is None else a.astype(np.float64) for name, a in slots.items()}
    for g in grads:
        update(w, g, *args, **slots, **kwargs)
        reference_update(expected_w, g.astype(np.float64), *args, **expected_slots, **kwargs)
    np.testing.assert_allclose(w, expected_w, rtol=1e-5, atol=1e-6)
    for name, got in slots.items():
        if got is not None:
            np.testing.assert_allclose(got, expected_slots[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("size", STATE_SIZES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_update_matches_reference(isa, threads, rng, size, momentum):
    threads(2)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    slots = {"velocity": np.abs(rng.standard_normal(size)).astype(np.float32),
             "momentum_buffer": rng.standard_normal(size).astype(np.float32) if momentum else None}
    # epsilon 0.01 so that it counts next to every velocity, not only the smallest
    w = rng.standard_normal(size).astype(np.float32)
    _steps_match_reference(fastconv.rmsprop_update, reference.rmsprop_update, w, grads, slots,
                           lr=0.01, rho=0.8, epsilon=0.01, momentum=momentum)


@pytest.mark.parametrize("size", STATE_SIZES)
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.0, True), (0.9, False), (0.9, True)])
def test_sgd_update_matches_reference(isa, threads, rng, size, momentum, nesterov):
    threads(2)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    slots = {"velocity": rng.standard_normal(size).astype(np.float32) if momentum else None}
    w = rng.standard_normal(size).astype(np.float32)
    _steps_match_reference(fastconv.sgd_update, reference.sgd_update, w, grads, slots,
                           lr=0.1, momentum=momentum, nesterov=nesterov)


def test_in_place_updates_reject_arrays_they_cannot_update():
    g = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="w must be a float32"):
        fastconv.adam_update(np.ones(4), g, np.ones(4, np.float32), np.ones(4, np.float32), 0.1, 0.9, 0.99, 1e-7)
    with pytest.raises(ValueError, match="m must have shape"):
        fastconv.adam_update(np.ones(4, np.float32), g, np.ones(5, np.float32), np.ones(4, np.float32), 0.1, 0.9,
                             0.99, 1e-7)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastconv.adadelta_update(np.ones(8, np.float32)[::2], g, np.ones(4, np.float32), np.ones(4, np.float32),
                                 1.0, 0.95, 1e-7)
    with pytest.raises(ValueError, match="y must have shape"):
        fastconv.relu_backward(g, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="velocity must be a float32"):
        fastconv.rmsprop_update(np.ones(4, np.float32), g, np.ones(4), 0.1, 0.9, 1e-7)
    with pytest.raises(ValueError, match="momentum_buffer must be a writeable, aligned, C-contiguous"):
        fastconv.rmsprop_update(np.ones(4, np.float32), g, np.ones(4, np.float32), 0.1, 0.9, 1e-7, 0.9,
                                np.ones(8, np.float32)[::2])
    with pytest.raises(ValueError, match="velocity must have shape"):
        fastconv.sgd_update(np.ones(4, np.float32), g, 0.1, 0.9, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="w must be a float32"):
        fastconv.sgd_update(np.ones(4, np.float16), g, 0.1)


@pytest.mark.parametrize("ops", [fastconv, reference], ids=["fastconv", "reference"])
def test_momentum_buffers_are_given_exactly_when_momentum_is_not_zero(ops):
    w, g, velocity = np.ones(4, np.float32), np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="momentum_buffer is required when momentum != 0"):
        ops.rmsprop_update(w, g, velocity, 0.1, 0.9, 1e-7, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffer must be None when momentum == 0"):
        ops.rmsprop_update(w, g, velocity, 0.1, 0.9, 1e-7, momentum_buffer=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="velocity is required when momentum != 0"):
        ops.sgd_update(w, g, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="velocity must be None when momentum == 0"):
        ops.sgd_update(w, g, 0.1, velocity=velocity)
    np.testing.assert_array_equal(w, 1.0)  # nothing was updated


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9])
def test_dropout_mask_matches_reference_and_rate(isa, threads, rate):
    x = np.random.default_rng(0).standard_normal((64, 12, 12, 8)).astype(np.float32)
    y, mask = fastconv.dropout(x, rate, seed=12345)
    ref_y, ref_mask = reference.dropout(x, rate, seed=12345)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(y, ref_y)
    kept = mask != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)
    threads(1)
    np.testing.assert_array_equal(fastconv.dropout(x, rate, seed=12345)[1], mask)  # any thread count
    assert not np.array_equal(fastconv.dropout(x, 0.5, seed=1)[1], fastconv.dropout(x, 0.5, seed=2)[1])


def test_dropout_rejects_bad_rate_and_seed():
    with pytest.raises(ValueError, match="rate must be"):
        fastconv.dropout(np.ones(3), 1.0, 0)
    with pytest.raises(ValueError, match="seed must be"):
        fastconv.dropout(np.ones(3), 0.5, -1)


# A model's weights: sizes that leave every kind of remainder, one above the two-thread threshold.
MODEL_SIZES = [288, 32, 18_432, 64, 250_007, 128, 1_283, 10, 1, 17]

UPDATE_ALL_CASES = {  # name: (slot count, the rule's other arguments, one call per array, all in one call)
    "adam": (2, (1e-3, 0.9, 0.999, 1e-7), "adam_update", "adam_update_all"),
    "adadelta": (2, (1.0, 0.95, 1e-7), "adadelta_update", "adadelta_update_all"),
    "rmsprop": (1, (0.01, 0.8, 0.01), "rmsprop_update", "rmsprop_update_all"),
    "rmsprop-momentum": (2, (0.01, 0.8, 0.01, 0.9), "rmsprop_update", "rmsprop_update_all"),
    "sgd": (0, (0.1,), "sgd_update", "sgd_update_all"),
    "sgd-nesterov": (1, (0.1, 0.9), "sgd_update", "sgd_update_all"),
}


def _call_update(ops, name, single, w, g, slots, args):
    """One rule's call, single (arrays) or all (lists), with the slots where its signature puts them."""
    fn = getattr(ops, UPDATE_ALL_CASES[name][2] if single else UPDATE_ALL_CASES[name][3])
    if name.startswith("rmsprop"):
        lr, rho, epsilon, *momentum = args
        buffers = slots[1] if momentum else None
        return fn(w, g, slots[0], lr, rho, epsilon, *(momentum or [0.0]), buffers)
    if name.startswith("sgd"):
        lr, *momentum = args
        return fn(w, g, lr, *(momentum or [0.0]), slots[0] if momentum else None, name.endswith("nesterov"))
    return fn(w, g, *slots, *args)


@pytest.mark.parametrize("name", list(UPDATE_ALL_CASES))
@pytest.mark.parametrize("thread_count", [1, 2])
def test_update_all_is_bitwise_one_update_per_array_and_matches_float64(isa, threads, rng, name, thread_count):
    """The one-call update of a model's arrays gives the bits of one call per array (any thread count
    shares the elements out differently), and float64 NumPy's rule to float32 rounding."""
    threads(thread_count)
    slot_count, args = UPDATE_ALL_CASES[name][:2]
    w = [rng.standard_normal(n).astype(np.float32) for n in MODEL_SIZES]
    slots = [[np.abs(rng.standard_normal(n)).astype(np.float32) for n in MODEL_SIZES] for _ in range(slot_count)]
    expected = ([a.copy() for a in w], [[a.copy() for a in column] for column in slots])
    exact = ([a.astype(np.float64) for a in w], [[a.astype(np.float64) for a in column] for column in slots])
    for _ in range(2):
        g = [rng.standard_normal(n).astype(np.float32) for n in MODEL_SIZES]
        _call_update(fastconv.ops, name, False, w, g, slots, args)
        for t in range(len(MODEL_SIZES)):
            _call_update(fastconv.ops, name, True, expected[0][t], g[t], [column[t] for column in expected[1]], args)
            _call_update(reference, name, True, exact[0][t], g[t].astype(np.float64),
                         [column[t] for column in exact[1]], args)
    for got, bits, wide in zip([w] + slots, [expected[0]] + expected[1], [exact[0]] + exact[1]):
        for a, b, c in zip(got, bits, wide):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_update_all_takes_the_arrays_one_at_a_time_when_it_must():
    """A gradient to convert, a weight listed twice (updated twice, in order), and the errors of the
    one-array update, naming the argument."""
    w, m, v = np.ones(20, np.float32), np.zeros(20, np.float32), np.zeros(20, np.float32)
    g64 = np.full(20, 0.5)
    fastconv.ops.adam_update_all([w], [g64], [m], [v], 0.1, 0.9, 0.999, 1e-7)
    ref = [np.ones(20), np.zeros(20), np.zeros(20)]
    reference.adam_update(ref[0], g64, ref[1], ref[2], 0.1, 0.9, 0.999, 1e-7)
    np.testing.assert_allclose(w, ref[0], rtol=1e-5)
    w2 = np.ones(20, np.float32)
    fastconv.ops.sgd_update_all([w2, w2], [np.ones(20, np.float32)] * 2, 0.25)
    np.testing.assert_array_equal(w2, 0.5)
    with pytest.raises(ValueError, match="m must have shape"):
        fastconv.ops.adam_update_all([w], [g64], [np.zeros(21, np.float32)], [v], 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="w must be a writeable"):
        fastconv.ops.adam_update_all([np.ones(40, np.float32)[::2]], [g64], [m], [v], 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="one gradient and one of each"):
        fastconv.ops.adadelta_update_all([w], [g64, g64], [m], [v], 1.0, 0.95, 1e-7)


def test_dropout_keep_bytes_give_the_float_mask_s_products(isa, threads, rng):
    """dropout_keep's bytes mark the float mask's kept elements, and dropout_backward multiplies by
    that mask: the bits of dy * mask, NaN and infinities included, on any thread count."""
    x = rng.standard_normal((6, 5, 7, 11)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    ref_y, ref_mask = reference.dropout(x, 0.4, 2**63 + 5, first=33)
    for thread_count in (1, 2):
        threads(thread_count)
        y, keep = fastconv.ops.dropout_keep(x, 0.4, 2**63 + 5, first=33)
        assert keep.dtype == np.uint8 and keep.shape == x.shape
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(keep, ref_mask != 0)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(fastconv.ops.dropout_backward(dy, keep, 0.4), dy * ref_mask)
            np.testing.assert_array_equal(reference.dropout_backward(dy, keep, 0.4), dy * ref_mask)
    np.testing.assert_array_equal(reference.dropout_keep(x, 0.4, 2**63 + 5, first=33)[1], keep)
    with pytest.raises(ValueError, match="first must be"):
        fastconv.ops.dropout_keep(x, 0.4, 1, first=-1)
    with pytest.raises(TypeError, match="keep must be the uint8 array"):
        fastconv.ops.dropout_backward(dy, ref_mask, 0.4)
    with pytest.raises(ValueError, match="keep must have shape"):
        fastconv.ops.dropout_backward(dy, keep[:2], 0.4)


@pytest.mark.parametrize("size", STATE_SIZES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_pair_sum_is_numpys_float32_add_then_scale(isa, threads, rng, size, scale):
    """Two ranks' gradients summed in rank order (distributed._ordered_total): the bits of NumPy's
    float32 add followed by the multiplication, and the flag says whether all of them are finite."""
    from fastconv import _C
    threads(2)
    magnitudes = np.array([1e-42, 1e-39, 1.0, 3e38], np.float32)  # subnormal, near normal's edge, large
    with np.errstate(over="ignore"):  # a few large draws become Inf: operands the flag must see
        a = (rng.standard_normal(size) * rng.choice(magnitudes, size)).astype(np.float32)
        b = (rng.standard_normal(size) * rng.choice(magnitudes, size)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.add(a, b)
        expected *= np.float32(scale)
    out = np.full(size, np.nan, np.float32)
    assert _C.pair_sum(a, b, scale, out) == bool(np.isfinite(expected).all())
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))

    finite_a, finite_b = (np.clip(v, -1e30, 1e30) for v in (a, b))
    assert _C.pair_sum(finite_a, finite_b, scale, out)
    for bad in (np.inf, -np.inf, np.nan):  # in either operand, anywhere, including the last element
        for where in {0, size // 2, size - 1}:
            spoiled = finite_b.copy()
            spoiled[where] = bad
            assert not _C.pair_sum(finite_a, spoiled, scale, out)
            assert not _C.pair_sum(spoiled, finite_a, scale, out)
    in_place = finite_a.copy()
    assert _C.pair_sum(in_place, finite_b, scale, in_place)
    np.testing.assert_array_equal(in_place, (finite_a + finite_b) * np.float32(scale))


def test_pair_sum_rejects_unequal_lengths():
    from fastconv import _C
    with pytest.raises(ValueError, match="equal lengths"):
        _C.pair_sum(np.zeros(3, np.float32), np.zeros(4, np.float32), 1.0, np.zeros(3, np.float32))
