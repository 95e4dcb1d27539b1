"""Every op that writes into a given array (`out`, or optimizer state updated in place) refuses every
input that shares memory with it, all through one check (fastconv._args.check_disjoint); arrays next
to each other in one buffer, or interleaved without a common element, are accepted and give the
right result; an elementwise op may write over its own input exactly (relu_backward's out=dy)."""
import math

import numpy as np
import pytest

import fastconv


def carve(out_shape, in_shape, shift, fill=None):
    """(out, input) as views of one float32 buffer, the input starting `shift` elements after out."""
    n_out, n_in = math.prod(out_shape), math.prod(in_shape)
    base = max(0, -shift)
    buf = np.zeros(base + max(n_out, shift + n_in), np.float32)
    out = buf[base:base + n_out].reshape(out_shape)
    inp = buf[base + shift:base + shift + n_in].reshape(in_shape)
    if fill is not None:
        inp[...] = fill
    return out, inp


rng = np.random.default_rng(5)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# op name -> (function of (inputs, out), {input: array}, out shape)
X, W, B = f32(2, 6, 6, 3), f32(3, 3, 3, 5), f32(5)
XT, WT, BT = f32(2, 4, 4, 5), f32(3, 3, 2, 5), f32(2)
OPS = {
    "gemm": (lambda i, out: fastconv.gemm(i["a"], i["b"], bias=i["bias"], beta=0.5, out=out),
             {"a": f32(7, 5), "b": f32(5, 6), "bias": f32(6)}, (7, 6)),
    "conv2d": (lambda i, out: fastconv.conv2d(i["x"], i["w"], i["b"], out=out),
               {"x": X, "w": W, "b": B}, (2, 4, 4, 5)),
    "conv2d_transpose": (lambda i, out: fastconv.conv2d_transpose(i["x"], i["w"], i["b"], out=out),
                         {"x": XT, "w": WT, "b": BT}, (2, 6, 6, 2)),
    "maxpool2d": (lambda i, out: fastconv.maxpool2d(i["x"], 2, out=out), {"x": X}, (2, 3, 3, 3)),
    "avgpool2d": (lambda i, out: fastconv.avgpool2d(i["x"], 2, out=out), {"x": X}, (2, 3, 3, 3)),
    "relu_backward": (lambda i, out: fastconv.relu_backward(i["dy"], i["y"], out=out),
                      {"dy": f32(40), "y": f32(40)}, (40,)),
}
CASES = [(op, name) for op, (_, inputs, _) in OPS.items() for name in inputs]


def inputs_with(op, name, arr):
    inputs = {k: v.copy() for k, v in OPS[op][1].items()}
    inputs[name] = arr
    return inputs


@pytest.mark.parametrize("op,name", CASES)
@pytest.mark.parametrize("where", ["last element of out", "first element of out"])
def test_an_input_overlapping_out_by_one_element_is_refused(op, name, where):
    call, inputs, out_shape = OPS[op]
    shape = inputs[name].shape
    shift = math.prod(out_shape) - 1 if where.startswith("last") else -(math.prod(shape) - 1)
    out, inp = carve(out_shape, shape, shift, inputs[name])
    with pytest.raises(ValueError, match=f"out overlaps input {name}"):
        call(inputs_with(op, name, inp), out)


@pytest.mark.parametrize("op,name", CASES)
def test_an_input_right_after_out_is_accepted_and_right(op, name):
    call, inputs, out_shape = OPS[op]
    out, inp = carve(out_shape, inputs[name].shape, math.prod(out_shape), inputs[name])
    out[...] = 1.0  # gemm reads it (beta)
    expected = call(inputs_with(op, name, inputs[name].copy()), np.ones(out_shape, np.float32))
    got = call(inputs_with(op, name, inp), out)
    assert got is out
    np.testing.assert_array_equal(out, expected)


def test_the_issues_examples():
    """gemm(..., out=o, bias=o[0]) gave 9 and 17 where 9 is right; relu_backward with dy = buf[:-1],
    out = buf[1:] got 63 of 1024 values wrong."""
    o = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="out overlaps input bias"):
        fastconv.gemm(np.ones((2, 3), np.float32), np.full((3, 2), 3, np.float32), out=o, bias=o[0])
    buf = np.ones(1025, np.float32)
    with pytest.raises(ValueError, match="out overlaps input dy"):
        fastconv.relu_backward(buf[:-1], np.ones(1024, np.float32), out=buf[1:])


@pytest.mark.parametrize("same", ["dy", "y"])
def test_relu_backward_may_write_over_its_own_input(same):
    dy, y = f32(1000), f32(1000)
    expected = np.where(y > 0, dy, 0).astype(np.float32)
    target = dy if same == "dy" else y
    assert fastconv.relu_backward(dy, y, out=target) is target
    np.testing.assert_array_equal(target, expected)


def test_gemm_out_may_interleave_with_an_input_in_one_buffer():
    """out = big[:, :6] and a = big[:, 6:]: their bounds overlap, their elements do not."""
    big = np.zeros((7, 11), np.float32)
    a, b = f32(7, 5), f32(5, 6)
    big[:, 6:] = a
    out = fastconv.gemm(big[:, 6:], b, out=big[:, :6])
    np.testing.assert_array_equal(out, fastconv.gemm(a, b))
    np.testing.assert_array_equal(big[:, 6:], a)


def test_a_converted_copy_does_not_count():
    """x given as float64 is copied before the kernel reads it: out may then share x's memory."""
    x64 = np.arange(32, dtype=np.float64).reshape(1, 4, 4, 2)
    expected = fastconv.maxpool2d(x64.astype(np.float32), 2)
    out = x64.reshape(-1).view(np.float32)[:8].reshape(1, 2, 2, 2)  # x64's first 32 bytes
    assert np.shares_memory(out, x64)
    np.testing.assert_array_equal(fastconv.maxpool2d(x64, 2, out=out), expected)


UPDATES = {
    "adam_update": (lambda s, g: fastconv.adam_update(s["w"], g, s["m"], s["v"], 0.01, 0.9, 0.999, 1e-7),
                    ("w", "m", "v")),
    "adadelta_update": (lambda s, g: fastconv.adadelta_update(s["w"], g, s["accumulated_grad"],
                                                              s["accumulated_delta"], 1.0, 0.95, 1e-7),
                        ("w", "accumulated_grad", "accumulated_delta")),
    "rmsprop_update": (lambda s, g: fastconv.rmsprop_update(s["w"], g, s["velocity"], 0.01, 0.9, 1e-7, 0.5,
                                                            s["momentum_buffer"]),
                       ("w", "velocity", "momentum_buffer")),
    "sgd_update": (lambda s, g: fastconv.sgd_update(s["w"], g, 0.01, 0.9, s["velocity"]), ("w", "velocity")),
}
UPDATE_CASES = [(op, first, second) for op, (_, names) in UPDATES.items()
                for i, first in enumerate(names) for second in list(names[i + 1:]) + ["g"]]


@pytest.mark.parametrize("op,first,second", UPDATE_CASES)
def test_updated_state_overlapping_another_array_is_refused(op, first, second):
    """State updated in place must not share memory with other state or with the gradient."""
    call, names = UPDATES[op]
    state = {name: np.zeros(64, np.float32) for name in names}
    g = f32(64)
    written, read = carve((64,), (64,), 63)
    state[first] = written
    if second == "g":
        g = read
    else:
        state[second] = read
    with pytest.raises(ValueError, match="overlaps input"):
        call(state, g)


@pytest.mark.parametrize("op", list(UPDATES))
def test_updates_with_state_side_by_side_in_one_buffer_are_right(op):
    call, names = UPDATES[op]
    g = f32(64)
    separate = {name: np.full(64, 0.5, np.float32) for name in names}
    call(separate, g.copy())
    buf = np.full(64 * (len(names) + 1), 0.5, np.float32)
    packed = {name: buf[64 * i:64 * (i + 1)] for i, name in enumerate(names)}
    buf[64 * len(names):] = g
    call(packed, buf[64 * len(names):])
    for name in names:
        np.testing.assert_array_equal(packed[name], separate[name])
