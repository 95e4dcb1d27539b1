"""Sizes: absurd shapes and parameters are refused with a clear ValueError/TypeError naming the
argument, before any allocation and before any 64-bit arithmetic in C could overflow; files whose
headers claim absurd sizes are refused before their arrays are allocated."""
import gzip
import io
import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv import keras
from fastconv._args import MAX_ELEMENTS, MAX_PARAMETER
from fastconv.datasets.idx import read_idx

X = np.zeros((1, 6, 6, 2), np.float32)
W = np.zeros((3, 3, 2, 4), np.float32)
HUGE = (MAX_PARAMETER + 1, 2**63, 2**70)


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("call,name", [
    (lambda v: fastconv.conv2d(X, W, strides=v), "strides"),
    (lambda v: fastconv.conv2d(X, W, strides=(1, v), padding="same"), "strides"),
    (lambda v: fastconv.conv2d(X, W, dilation_rate=v, padding="same"), "dilation_rate"),
    (lambda v: fastconv.conv2d(X, W, padding=v), "padding"),
    (lambda v: fastconv.conv2d(X, W, padding=((0, v), (0, 0))), "padding"),
    (lambda v: fastconv.conv2d_backward(np.zeros((1, 6, 6, 4)), X, W, padding=v), "padding"),
    (lambda v: fastconv.conv2d_workspace_bytes(X.shape, W.shape, dilation_rate=v, backward=True), "dilation_rate"),
    (lambda v: fastconv.conv2d_algorithm(X.shape, W.shape, strides=v), "strides"),
    (lambda v: fastconv.conv2d_transpose(X, W.transpose(0, 1, 3, 2), strides=v), "strides"),
    (lambda v: fastconv.conv2d_transpose(X, W.transpose(0, 1, 3, 2), strides=2, output_padding=(0, v)),
     "output_padding"),
    (lambda v: fastconv.maxpool2d(X, v, padding="same"), "pool_size"),
    (lambda v: fastconv.maxpool2d(X, 2, v), "strides"),
    (lambda v: fastconv.avgpool2d(X, (1, v), padding="same"), "pool_size"),
    (lambda v: fastconv.avgpool2d_backward(np.zeros((1, 3, 3, 2)), X, 2, (v, 2)), "strides"),
    (lambda v: fastconv.maxpool2d_backward(np.zeros((1, 1, 1, 2)), X, v, padding="same"), "pool_size"),
])
def test_absurd_parameters_are_value_errors_naming_the_argument(call, name, value):
    with pytest.raises(ValueError, match=name):
        call(value)


@pytest.mark.parametrize("x_shape,w_shape,what", [
    ((1, 1, 1, 2**40), (1, 1, 2**40, 2**30), "w"),                  # a kernel of 2**70 values
    ((2**20, 1, 1, 4), (1, 1, 4, 2**36), "output"),
    ((1, 2**30, 2**28, 1), (2**29, 2**27, 1, 1), "padded x"),
    ((2**40, 2**10, 1, 1), (1, 1, 1, 1), "padded x"),
])
@pytest.mark.parametrize("backward", [False, True])
def test_shape_only_functions_refuse_sizes_that_overflow(x_shape, w_shape, what, backward):
    """conv2d_workspace_bytes and conv2d_algorithm take shapes, not arrays: no allocation limits them."""
    for algorithm in ("auto", "im2col", "direct"):
        with pytest.raises(ValueError, match=f"{what} would have"):
            fastconv.conv2d_workspace_bytes(x_shape, w_shape, backward=backward, algorithm=algorithm)
    with pytest.raises(ValueError, match=f"{what} would have"):
        fastconv.conv2d_algorithm(x_shape, w_shape)


@settings(max_examples=60, deadline=None, database=None)
@given(dims=st.lists(st.integers(1, 2**45), min_size=7, max_size=7), backward=st.booleans(),
       algorithm=st.sampled_from(["auto", "im2col", "direct"]))
def test_workspace_size_is_non_negative_or_refused_for_any_shape(dims, backward, algorithm):
    n, h, w, cin, kh, kw, cout = dims
    kh, kw = min(kh, h), min(kw, w)
    try:
        size = fastconv.conv2d_workspace_bytes((n, h, w, cin), (kh, kw, cin, cout), backward=backward,
                                               algorithm=algorithm)
    except ValueError as error:
        assert "would have" in str(error)
        return
    # Within the limits the size is at least the call's own buffers and far from int64 overflow.
    assert 0 <= size < 2**62


def test_gemm_result_size_is_checked_before_allocating():
    a, b = np.empty((2**40, 0), np.float32), np.empty((0, 2**40), np.float32)
    with pytest.raises(ValueError, match="out would have"):
        fastconv.gemm(a, b)
    # a small k == 0 product is still fine: zeros, plus beta * out and bias
    np.testing.assert_array_equal(fastconv.gemm(np.empty((2, 0)), np.empty((0, 3))), np.zeros((2, 3)))


@pytest.mark.parametrize("name,value,error", [
    ("alpha", "2", TypeError), ("alpha", None, TypeError), ("beta", True, TypeError), ("beta", [1.0], TypeError),
])
def test_gemm_scalars_are_checked(name, value, error):
    with pytest.raises(error, match=name):
        fastconv.gemm(np.ones((2, 2)), np.ones((2, 2)), **{name: value})
    assert fastconv.gemm(np.ones((2, 2)), np.ones((2, 2)), alpha=np.float64(2), beta=np.int32(0))[0, 0] == 4


def test_thread_count_beyond_int_is_a_value_error():
    before = fastconv.get_num_threads()
    with pytest.raises(ValueError, match="n must be"):
        fastconv.set_num_threads(2**40)
    assert fastconv.get_num_threads() == before


def test_limits_leave_room_for_int64_arithmetic():
    # element counts (x 4 bytes, x up to a thousand scratch buffers), sums of sizes and parameters and
    # products of two parameters stay inside int64
    assert MAX_ELEMENTS * 4 * 1024 < 2**63 and MAX_ELEMENTS + 4 * MAX_PARAMETER < 2**63
    assert MAX_PARAMETER * MAX_PARAMETER < 2**63


def peak_allocation(function):
    tracemalloc.start()
    try:
        function()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dims", [(2**32 - 1,) * 4, (2**16, 2**16, 2**1), (60000, 28, 28)])
def test_idx_header_claiming_a_huge_size_allocates_little(compress, dims):
    """Refused before allocating: by the size limit, or (raw) by the file size; a gzip stream,
    whose size is unknown, allocates in step with the data actually there (at most 64 MiB here)."""
    raw = bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + b"\x01" * 100
    data = gzip.compress(raw) if compress else raw

    def read():
        with pytest.raises(ValueError, match="limit|truncated"):
            read_idx(io.BytesIO(data))

    assert peak_allocation(read) <= (2**26 + 2**21 if compress else 2**20)


def model_file(tmp_path):
    path = tmp_path / "m.fastconv"
    keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)]).save(path)
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[12:20])
    return path, json.loads(blob[20:20 + length]), blob[20 + length:]


def write_model_file(path, header, data):
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<8sIQ", b"\x89FCKERAS", 1, len(body)) + body + data)


@pytest.mark.parametrize("edit", [
    lambda h: h["weights"][0].update(shape=[2**40, 2**40]),               # arrays bigger than the file
    lambda h: h["weights"][0].update(shape=[2**62, 0]),                   # zero values, absurd dimension
    lambda h: h["model"]["config"]["layers"][-1]["config"].update(units=10**12),   # a layer asking for 4 TB
    lambda h: h["model"]["config"].update(input_shape=[2**62]),
])
def test_model_file_claiming_a_huge_size_allocates_little(tmp_path, edit):
    path, header, data = model_file(tmp_path)
    edit(header)
    write_model_file(path, header, data)

    def load():
        with pytest.raises(ValueError, match="m.fastconv: "):
            keras.models.load_model(path)

    assert peak_allocation(load) < 2**22


def misaligned(shape, seed=0):
    """A float32 array at an odd address (as numpy.frombuffer gives at an odd offset)."""
    count = int(np.prod(shape))
    array = np.ndarray(shape, np.float32, buffer=np.zeros(4 * count + 1, np.uint8), offset=1)
    array[...] = np.random.default_rng(seed).standard_normal(shape)
    assert not array.flags.aligned
    return array


def test_misaligned_inputs_are_copied_and_misaligned_out_refused():
    """C reads float arrays: a misaligned pointer would be undefined behaviour (UBSan reports it)."""
    from fastconv import reference
    x, w, a, b = misaligned((2, 7, 7, 3)), misaligned((3, 3, 3, 5), 1), misaligned((9, 20), 2), misaligned((20, 6), 3)
    np.testing.assert_allclose(fastconv.conv2d(x, w, padding="same"), reference.conv2d(x, w, padding="same"),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fastconv.gemm(a, b), a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fastconv.maxpool2d(x, 2), reference.maxpool2d(x, 2))
    with pytest.raises(ValueError, match="out must be a writeable, aligned"):
        fastconv.gemm(a, b, out=misaligned((9, 6)))
    with pytest.raises(ValueError, match="out must be a writeable, aligned"):
        fastconv.maxpool2d(x, 2, out=misaligned((2, 3, 3, 3)))


def test_large_outputs_and_weights_start_on_a_cache_line():
    """NumPy aligns arrays to 16 bytes only; outputs from 64 KiB on and Keras weights are 64-byte aligned,
    so no kernel's vector access to their rows splits a cache line. They are ordinary writeable arrays."""
    from fastconv import _C, keras
    rng = np.random.default_rng(4)
    for shape in [(5,), (128, 512), (3, 0), (2, 3, 4)]:
        array = _C.empty_aligned(shape)
        assert array.shape == shape and array.dtype == np.float32 and array.flags.c_contiguous
        assert array.flags.writeable and (array.size == 0 or array.ctypes.data % 64 == 0)
    assert _C.empty_aligned((3, 5), np.float64).dtype == np.float64
    assert _C.empty_aligned(7, np.uint8).shape == (7,) and _C.empty_aligned(()).shape == ()
    with pytest.raises(ValueError, match="negative dimensions"):
        _C.empty_aligned((2, -1))
    with pytest.raises(TypeError):
        _C.empty_aligned((2.5, 3))
    a, b = rng.standard_normal((128, 300), dtype=np.float32), rng.standard_normal((300, 200), dtype=np.float32)
    x = rng.standard_normal((8, 30, 30, 32), dtype=np.float32)
    w = rng.standard_normal((3, 3, 32, 64), dtype=np.float32)
    dy = rng.standard_normal((8, 28, 28, 64), dtype=np.float32)
    outputs = [fastconv.gemm(a, b), fastconv.gemm(a, b, bias=np.ones(200, np.float32)), fastconv.conv2d(x, w),
               *fastconv.conv2d_backward(dy, x, w)[:2], fastconv.maxpool2d(x, 2), fastconv.relu_backward(dy, dy)]
    for out in outputs:
        assert out.nbytes >= _C.ALIGNED_MIN_BYTES and out.ctypes.data % 64 == 0
    np.testing.assert_allclose(outputs[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    layer = keras.layers.Dense(300)
    layer.build((None, 70))
    assert all(v.value.ctypes.data % 64 == 0 for v in layer.weights)
