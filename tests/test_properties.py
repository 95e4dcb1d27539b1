"""Property-based tests (hypothesis): every op against fastconv.reference on every ISA path, over
random shapes including degenerate ones; and the two file parsers (IDX, model files) over random,
truncated and bit-flipped inputs, which must give a correct result or a ValueError, nothing else.

The example count per test is FASTCONV_PROPERTY_EXAMPLES (default 50, so CI stays fast); raise it
for a longer run, e.g. FASTCONV_PROPERTY_EXAMPLES=1000 python -m pytest tests/test_properties.py.
"""
import contextlib
import gzip
import io
import json
import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import fastconv
from fastconv import reference
from fastconv._args import conv_geometry, conv_transpose_geometry, pool_geometry
from fastconv.datasets.idx import IDX_DTYPES, read_idx

EXAMPLES = int(os.environ.get("FASTCONV_PROPERTY_EXAMPLES", "50"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ISAS = fastconv.available_isas()
EPS32 = float(np.finfo(np.float32).eps)


@contextlib.contextmanager
def using_isa(name):
    previous = fastconv.get_isa()
    fastconv.set_isa(name)
    try:
        yield
    finally:
        fastconv.set_isa(previous)


def data_for(seed, shape, integer_valued=False):
    """Random float32 data; integer-valued (many ties) when asked."""
    rng = np.random.default_rng(seed)
    if integer_valued:
        return rng.integers(-3, 4, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def assert_bounded(got, want, scale, terms, what):
    """float32 result vs float64 oracle: |error| <= c * sqrt(terms) * eps * scale (scale = |.|-sum)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bound = 8 * np.sqrt(terms + 1) * EPS32 * scale + 1e-30
    err = np.abs(got.astype(np.float64) - want)
    bad = err > bound
    assert not bad.any(), f"{what}: error {err[bad].max():.3g} above bound at {np.argwhere(bad)[0]}"


# ---------------------------------------------------------------- gemm
def laid_out(values, layout, pad):
    """The same matrix as a C-ordered array, a column slice of a wider one ("padded"), or a row slice of a
    taller Fortran-ordered one ("fortran"): gemm reads the last two in place with their strides."""
    rows, cols = values.shape
    if layout == "padded":
        view = np.zeros((rows, cols + pad), np.float32)[:, :cols]
    elif layout == "fortran":
        view = np.asfortranarray(np.zeros((rows + pad, cols), np.float32))[:rows]
    else:
        return values
    view[...] = values
    return view


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(m=st.integers(0, 40), n=st.integers(0, 70), k=st.integers(0, 90), trans_a=st.booleans(),
       trans_b=st.booleans(), alpha=st.sampled_from([1.0, 0.0, -1.5, 0.25]),
       beta=st.sampled_from([0.0, 1.0, -0.5, 2.0]), with_out=st.booleans(), with_bias=st.booleans(),
       relu=st.booleans(), layouts=st.tuples(*[st.sampled_from(["c", "padded", "fortran"])] * 2),
       out_padded=st.booleans(), pad=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
@example(m=1, n=1, k=1, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, with_out=False, with_bias=False,
         relu=False, layouts=("c", "c"), out_padded=False, pad=1, seed=0)
def test_gemm_matches_reference(isa, m, n, k, trans_a, trans_b, alpha, beta, with_out, with_bias, relu, layouts,
                                out_padded, pad, seed):
    a = data_for(seed, (k, m) if trans_a else (m, k))
    b = data_for(seed + 1, (n, k) if trans_b else (k, n))
    c0 = data_for(seed + 2, (m, n)) if with_out else None
    bias = data_for(seed + 3, (n,)) if with_bias else None
    activation = "relu" if relu else None
    out = wide = None
    if c0 is not None and out_padded:
        wide = np.full((m, n + pad), 7.0, np.float32)
        out = wide[:, :n]
        out[...] = c0
    elif c0 is not None:
        out = c0.copy()
    with using_isa(isa):
        got = fastconv.gemm(laid_out(a, layouts[0], pad), laid_out(b, layouts[1], pad), trans_a=trans_a,
                            trans_b=trans_b, alpha=alpha, beta=beta, out=out, bias=bias, activation=activation)
    if out is not None:
        assert got is out
    if wide is not None:
        assert (wide[:, n:] == 7.0).all(), "gemm wrote into the padding of out's rows"
    f64 = lambda v: None if v is None else v.astype(np.float64)  # noqa: E731
    eff_beta = beta if with_out else 0.0
    want = reference.gemm(f64(a), f64(b), trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=eff_beta,
                          out=f64(c0), bias=f64(bias), activation=activation)
    scale = abs(alpha) * reference.gemm(np.abs(f64(a)), np.abs(f64(b)), trans_a=trans_a, trans_b=trans_b)
    if with_out:
        scale = scale + abs(eff_beta) * np.abs(f64(c0))
    if with_bias:
        scale = scale + np.abs(f64(bias))
    assert_bounded(got, want, scale, k, "gemm")


# ---------------------------------------------------------------- conv2d
@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    cin = draw(st.sampled_from([1, 1, 2, 3, 4, 5, 8, 17]))
    cout = draw(st.sampled_from([1, 2, 3, 7, 8, 16, 17, 33]))
    shape_kind = draw(st.sampled_from(["random", "random", "equal_to_input", "one"]))
    if shape_kind == "equal_to_input":
        kh, kw = h, w
    elif shape_kind == "one":
        kh, kw = 1, 1
    else:
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (1, 3), (2, 2)]))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same"]), st.integers(0, 2),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2)))))
    return (n, h, w, cin), (kh, kw, cin, cout), dict(strides=strides, padding=padding, dilation_rate=dilation)


def _valid_conv(x_shape, w_shape, kwargs):
    try:
        conv_geometry(x_shape, w_shape, **kwargs)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=conv_cases(), algorithm=st.sampled_from(["auto", "im2col", "direct"]), with_bias=st.booleans(),
       relu=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_forward_and_backward_match_reference(isa, case, algorithm, with_bias, relu, seed):
    x_shape, w_shape, kwargs = case
    x, w = data_for(seed, x_shape), data_for(seed + 1, w_shape)
    b = data_for(seed + 2, (w_shape[3],)) if with_bias else None
    if not _valid_conv(x_shape, w_shape, kwargs):  # the op must refuse it the same way, before any C
        with using_isa(isa), pytest.raises(ValueError):
            fastconv.conv2d(x, w, b, algorithm=algorithm, **kwargs)
        return
    activation = "relu" if relu else None
    with using_isa(isa):
        y = fastconv.conv2d(x, w, b, activation=activation, algorithm=algorithm, **kwargs)
        dy = data_for(seed + 3, y.shape)
        dx, dw, db = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, **kwargs)
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    kh, kw, cin, cout = w_shape
    want = reference.conv2d(x64, w64, b64, activation=activation, **kwargs)
    scale = reference.conv2d(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64), **kwargs)
    assert_bounded(y, want, scale, kh * kw * cin, "conv2d")
    rdx, rdw, rdb = reference.conv2d_backward(dy64, x64, w64, **kwargs)
    sdx, sdw, sdb = reference.conv2d_backward(np.abs(dy64), np.abs(x64), np.abs(w64), **kwargs)
    assert_bounded(dx, rdx, sdx, kh * kw * cout, "conv2d dx")
    assert_bounded(dw, rdw, sdw, y.shape[0] * y.shape[1] * y.shape[2], "conv2d dw")
    assert_bounded(db, rdb, sdb, y.shape[0] * y.shape[1] * y.shape[2], "conv2d db")


@st.composite
def conv_transpose_cases(draw):
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    cin, cout = draw(st.sampled_from([1, 2, 5, 16, 33])), draw(st.sampled_from([1, 3, 4, 8, 17]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (1, 3)]))
    output_padding = draw(st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 2), st.integers(0, 2))))
    padding = draw(st.sampled_from(["valid", "same"]))
    return (n, h, w, cin), (kh, kw, cout, cin), dict(strides=strides, padding=padding, dilation_rate=dilation,
                                                     output_padding=output_padding)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=conv_transpose_cases(), algorithm=st.sampled_from(["auto", "im2col", "direct"]),
       with_bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_transpose_matches_reference(isa, case, algorithm, with_bias, seed):
    x_shape, w_shape, kwargs = case
    x, w = data_for(seed, x_shape), data_for(seed + 1, w_shape)
    b = data_for(seed + 2, (w_shape[2],)) if with_bias else None
    try:
        conv_transpose_geometry(x_shape, w_shape, **kwargs)
    except ValueError:  # the op must refuse it the same way, before any C
        with using_isa(isa), pytest.raises(ValueError):
            fastconv.conv2d_transpose(x, w, b, algorithm=algorithm, **kwargs)
        return
    with using_isa(isa):
        y = fastconv.conv2d_transpose(x, w, b, algorithm=algorithm, **kwargs)
    b64 = None if b is None else b.astype(np.float64)
    want = reference.conv2d_transpose(x.astype(np.float64), w.astype(np.float64), b64, **kwargs)
    scale = reference.conv2d_transpose(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                                       None if b is None else np.abs(b64), **kwargs)
    assert_bounded(y, want, scale, w_shape[0] * w_shape[1] * w_shape[3], "conv2d_transpose")


# ---------------------------------------------------------------- pooling
@st.composite
def pool_cases(draw):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    c = draw(st.sampled_from([1, 2, 3, 8, 16, 17, 33]))
    kind = draw(st.sampled_from(["random", "random", "equal_to_input", "2x2"]))
    if kind == "equal_to_input":
        pool = (h, w)
    elif kind == "2x2":
        pool = (2, 2)
    else:
        pool = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    # None: strides = pool (no overlap); smaller strides overlap, larger ones skip inputs.
    strides = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = draw(st.sampled_from(["valid", "same"]))
    return (n, h, w, c), pool, strides, padding


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=pool_cases(), ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pooling_forward_and_backward_match_reference(isa, case, ties, seed):
    x_shape, pool, strides, padding = case
    x = data_for(seed, x_shape, integer_valued=ties)
    try:
        g = pool_geometry(x_shape, pool, strides, padding)
    except ValueError:
        with using_isa(isa):
            for op in (fastconv.maxpool2d, fastconv.avgpool2d):
                with pytest.raises(ValueError):
                    op(x, pool, strides, padding)
        return
    dy = data_for(seed + 1, g.out_shape)
    with using_isa(isa):
        mp = fastconv.maxpool2d(x, pool, strides, padding)
        mdx = fastconv.maxpool2d_backward(dy, x, pool, strides, padding)
        if pool[0] * pool[1] < fastconv.ops.ARGMAX_NONE:  # the argmax route gives the same gradient
            argmax = fastconv.maxpool2d(x, pool, strides, padding, return_argmax=True)[1]
            np.testing.assert_array_equal(argmax, reference.maxpool2d(x, pool, strides, padding, return_argmax=True)[1])
            np.testing.assert_array_equal(fastconv.maxpool2d_backward(dy, x, pool, strides, padding, argmax=argmax), mdx)
        ap = fastconv.avgpool2d(x, pool, strides, padding)
        adx = fastconv.avgpool2d_backward(dy, x, pool, strides, padding)
    # max pooling picks values and routes gradients to the first maximum: exact (ties included).
    np.testing.assert_array_equal(mp, reference.maxpool2d(x, pool, strides, padding))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    window = pool[0] * pool[1]
    # Overlapping windows add several gradients into one input, in another order than the reference.
    assert_bounded(mdx, reference.maxpool2d_backward(dy64, x64, pool, strides, padding),
                   reference.maxpool2d_backward(np.abs(dy64), x64, pool, strides, padding), window, "maxpool2d dx")
    assert_bounded(ap, reference.avgpool2d(x64, pool, strides, padding),
                   reference.avgpool2d(np.abs(x64), pool, strides, padding), window, "avgpool2d")
    assert_bounded(adx, reference.avgpool2d_backward(dy64, x64, pool, strides, padding),
                   reference.avgpool2d_backward(np.abs(dy64), x64, pool, strides, padding), window, "avgpool2d dx")


@SETTINGS
@given(shape=st.tuples(st.integers(0, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 17)),
       seed=st.integers(0, 2**32 - 1))
def test_global_avgpool_matches_reference(shape, seed):
    x = data_for(seed, shape)
    dy = data_for(seed + 1, (shape[0], shape[3]))
    x64 = x.astype(np.float64)
    terms = shape[1] * shape[2]
    assert_bounded(fastconv.global_avgpool2d(x), reference.global_avgpool2d(x64),
                   reference.global_avgpool2d(np.abs(x64)), terms, "global_avgpool2d")
    np.testing.assert_allclose(fastconv.global_avgpool2d_backward(dy, x),
                               reference.global_avgpool2d_backward(dy.astype(np.float64), x64), rtol=1e-6)


# ---------------------------------------------------------------- file parsers
def _mutate(data, draw):
    """A random damage of `data`: truncation, bit flips, overwritten bytes, appended or random bytes."""
    kind = draw(st.sampled_from(["none", "truncate", "flip", "flip", "overwrite", "append", "random"]))
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, max(len(data) - 1, 0)))])
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(data) - 1))
            # Headers are where the interesting damage is: bias positions toward the start.
            if draw(st.booleans()):
                position = min(position, draw(st.integers(0, min(len(data) - 1, 64))))
            data[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "overwrite" and data:
        position = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[position:position + len(patch)] = patch
        return bytes(data)
    if kind == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=16))
    if kind == "random":
        return draw(st.binary(max_size=64))
    return bytes(data)


def idx_bytes(array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(IDX_DTYPES[type_code]).tobytes()


@SETTINGS
@given(type_code=st.sampled_from(sorted(IDX_DTYPES)),
       shape=st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
       compress=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_idx_reader_gives_the_array_or_a_value_error(type_code, shape, compress, seed, data):
    array = (np.random.default_rng(seed).integers(-100, 100, size=shape)).astype(IDX_DTYPES[type_code])
    raw = idx_bytes(array, type_code)
    if compress:
        raw = gzip.compress(raw, mtime=0)
    damaged = _mutate(raw, data.draw)
    try:
        result = read_idx(io.BytesIO(damaged))
    except ValueError as error:
        assert "<_io.BytesIO" in str(error) or str(error)  # names the source
        return
    assert isinstance(result, np.ndarray) and result.dtype.isnative
    if damaged == raw:
        np.testing.assert_array_equal(result, array)
        assert result.dtype == array.dtype.newbyteorder("=")


def test_idx_reader_rejects_absurd_sizes_before_allocating():
    for compress in (False, True):
        header = bytes([0, 0, 0x0E, 4]) + struct.pack(">IIII", 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)
        raw = gzip.compress(header) if compress else header
        with pytest.raises(ValueError, match="limit"):
            read_idx(io.BytesIO(raw))


_MODEL_FILE = {}


def model_file_bytes():
    """The bytes of a small saved model (built once per session)."""
    if "model" not in _MODEL_FILE:
        from fastconv import keras
        model = keras.Sequential([
            keras.Input(shape=(6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        with tempfile.TemporaryDirectory() as tmp:
            model.save(os.path.join(tmp, "m.fastconv"))
            with open(os.path.join(tmp, "m.fastconv"), "rb") as f:
                _MODEL_FILE["model"] = f.read()
    return _MODEL_FILE["model"]


def _split_model_file(raw):
    magic, version, length = struct.unpack("<8sIQ", raw[:20])
    return raw[:20], json.loads(raw[20:20 + length]), raw[20 + length:]


def _join_model_file(header, data):
    body = json.dumps(header).encode()
    return struct.pack("<8sIQ", b"\x89FCKERAS", 1, len(body)) + body + data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from([0, 1, -1, 10**12, "relu", "same", "valid", "Dense", "Conv2D", "InputLayer", [1, 2]]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def _replace_random_value(node, draw, depth=0):
    """Replace one value somewhere inside a JSON tree by a random JSON value (structure-aware damage)."""
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if depth > 6 or draw(st.integers(0, 3)) == 0 or not isinstance(node[key], (dict, list)):
            node[key] = draw(json_values)
        else:
            _replace_random_value(node[key], draw, depth + 1)
    elif isinstance(node, list) and node:
        i = draw(st.integers(0, len(node) - 1))
        if depth > 6 or draw(st.integers(0, 3)) == 0 or not isinstance(node[i], (dict, list)):
            node[i] = draw(json_values)
        else:
            _replace_random_value(node[i], draw, depth + 1)


def _load_or_value_error(raw):
    from fastconv import keras
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.fastconv")
        with open(path, "wb") as f:
            f.write(raw)
        try:
            model = keras.models.load_model(path)
        except ValueError as error:
            assert path in str(error), f"the error does not name the file: {error}"
            return None
        if all(isinstance(d, int) for d in model.input_shape[1:]):
            model.predict(np.zeros((1, *model.input_shape[1:]), dtype=np.float32), verbose=0)
        return model


@SETTINGS
@given(data=st.data())
def test_model_file_loader_gives_the_model_or_a_value_error_on_damaged_bytes(data):
    raw = model_file_bytes()
    damaged = _mutate(raw, data.draw)
    model = _load_or_value_error(damaged)
    if damaged == raw:
        assert model is not None


@SETTINGS
@given(data=st.data())
def test_model_file_loader_gives_the_model_or_a_value_error_on_damaged_header(data):
    prefix, header, weights = _split_model_file(model_file_bytes())
    part = data.draw(st.sampled_from(["model", "compile", "weights", "all"]))
    if part == "all":
        _replace_random_value(header, data.draw)
    else:
        _replace_random_value(header[part], data.draw)
    _load_or_value_error(_join_model_file(header, weights))


def test_fuzz_finding_single_input_layer_on_a_list_is_refused_at_load(tmp_path):
    """tools/fuzz_model.py found this: a functional model file marking a BatchNormalization node as
    multi-input loaded, then predict failed with AttributeError. Now the load is a ValueError."""
    from fastconv import keras
    inputs = keras.Input(shape=(4, 4, 2))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "m.fastconv")
    prefix, header, weights = _split_model_file((tmp_path / "m.fastconv").read_bytes())
    for node in header["model"]["config"]["nodes"]:
        if node["inputs"]:
            node["multi_input"] = True
    (tmp_path / "m.fastconv").write_bytes(_join_model_file(header, weights))
    with pytest.raises(ValueError, match="takes one input, got a list of 1"):
        keras.models.load_model(tmp_path / "m.fastconv")
    with pytest.raises(ValueError, match="takes one input"):
        keras.layers.Dense(2)([inputs])
