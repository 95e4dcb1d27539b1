"""The direct kernels' weight gradient for few input channels (csrc/conv/direct.c), whose 3-wide,
stride-1 kernel rows take all three taps in one pass over each output row: against the float64
reference where the padding cuts taps off at either border, on rows narrower than the kernel, on
every instruction set, and with the same bits for any thread count."""
import numpy as np
import pytest

import fastconv
from fastconv import ops, reference

PADDINGS = ["valid", "same", ((0, 2), (2, 0)), ((1, 1), (0, 3)), ((2, 0), (1, 1))]


@pytest.mark.parametrize("cin", [1, 2, 3, 4])
@pytest.mark.parametrize("width", [1, 2, 3, 5, 17])
@pytest.mark.parametrize("padding", PADDINGS)
def test_three_tap_weight_gradient_matches_float64_reference(isa, rng, cin, width, padding):
    x = rng.standard_normal((3, 4, width, cin))
    for kernel, cout in (((3, 3), 20), ((1, 3), 32), ((2, 3), 7)):
        w = rng.standard_normal(kernel + (cin, cout))
        try:
            y = reference.conv2d(x, w, padding=padding)
        except ValueError:
            continue  # a kernel wider than the padded row
        if y.size == 0:
            continue
        plan = ops.conv2d_plan(x.shape, w.shape, padding=padding, backward=True, need_dx=False)
        assert plan["dw"] == "direct"
        dy = rng.standard_normal(y.shape)
        _, want_dw, want_db = reference.conv2d_backward(dy, x, w, padding=padding)
        _, dw, db = fastconv.conv2d_backward(dy.astype(np.float32), x.astype(np.float32), w.astype(np.float32),
                                             padding=padding, need_dx=False)
        scale = np.sqrt(np.prod(y.shape[:3]))
        np.testing.assert_allclose(dw, want_dw, rtol=0, atol=1e-5 * scale * max(1.0, np.abs(want_dw).max()))
        np.testing.assert_allclose(db, want_db, rtol=0, atol=1e-5 * scale * max(1.0, np.abs(want_db).max()))


def test_three_tap_weight_gradient_gives_the_same_bits_for_any_thread_count(isa, threads, rng):
    x = rng.standard_normal((23, 28, 28, 1)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
    dy = rng.standard_normal((23, 28, 28, 32)).astype(np.float32)
    results = []
    for count in (1, 2, 3):
        threads(count)
        results.append(fastconv.conv2d_backward(dy, x, w, padding="same", need_dx=False)[1:])
    for dw, db in results[1:]:
        np.testing.assert_array_equal(dw, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])
