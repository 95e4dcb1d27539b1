"""fastconv.shapes: one set of padding and output-size rules for the layers, the ops and the reference."""
import numpy as np
import pytest

import fastconv
from fastconv import reference, shapes
from fastconv.keras import layers


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("size,window,stride,dilation", [(7, 3, 1, 1), (8, 3, 2, 1), (9, 2, 3, 1), (10, 3, 1, 2),
                                                         (5, 5, 1, 1), (6, 1, 4, 1)])
def test_layer_window_and_op_geometry_agree(padding, size, window, stride, dilation):
    if stride > 1 and dilation > 1:
        pytest.skip("not supported")
    win = shapes.conv_window(window, stride, padding, dilation, explicit_padding=False)
    g = win.geometry((2, size, size + 1, 3), (window, window, 3, 4))
    assert win.output_shape((None, size, size + 1, 3), 4) == (None,) + g.out_shape[1:]
    x = np.ones((2, size, size + 1, 3), np.float32)
    w = np.ones((window, window, 3, 4), np.float32)
    assert fastconv.conv2d(x, w, strides=stride, padding=padding, dilation_rate=dilation).shape == g.out_shape
    assert reference.conv2d(x, w, strides=stride, padding=padding, dilation_rate=dilation).shape == g.out_shape
    layer = layers.Conv2D(4, window, strides=stride, padding=padding, dilation_rate=dilation)
    assert layer.compute_output_shape((None, size, size + 1, 3)) == (None,) + g.out_shape[1:]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pooling_layer_and_op_agree(padding):
    for size in (0, 1, 5, 6) if padding == "same" else (3, 5, 6):
        g = shapes.pool_geometry((1, size, size, 2), 3, 2, padding)
        layer = layers.MaxPooling2D(3, 2, padding)
        assert layer.compute_output_shape((None, size, size, 2)) == (None,) + g.out_shape[1:]


def test_window_too_large_for_valid_padding():
    with pytest.raises(ValueError, match="does not fit an input of size 2"):
        layers.Conv2D(1, 3).compute_output_shape((None, 2, 5, 1))
    assert layers.Conv2D(1, 3).compute_output_shape((None, None, 5, 1)) == (None, None, 3, 1)


def test_geometry_cache_returns_the_same_object_and_still_checks_types():
    g = shapes.conv_geometry((2, 9, 9, 3), (3, 3, 3, 4), 1, "same", 1)
    assert shapes.conv_geometry((2, 9, 9, 3), (3, 3, 3, 4), 1, "same", 1) is g
    assert shapes.conv_geometry([2, 9, 9, 3], [3, 3, 3, 4], (1, 1), "same", [1, 1]) == g
    # True == 1 and 2.0 == 2 as dict keys: the cache must not let them through
    with pytest.raises(TypeError, match="strides"):
        shapes.conv_geometry((2, 9, 9, 3), (3, 3, 3, 4), True, "same", 1)
    with pytest.raises(TypeError, match="strides"):
        shapes.conv_geometry((2, 9, 9, 3), (3, 3, 3, 4), (1, 1.0), "same", 1)
    assert shapes.conv_geometry((2, 9, 9, 3), (3, 3, 3, 4), np.int64(1), "same", 1) == g
    p = shapes.pool_geometry((1, 6, 6, 2), 2, None, "valid")
    assert shapes.pool_geometry((1, 6, 6, 2), 2, None, "valid") is p
    with pytest.raises(TypeError, match="pool_size"):
        shapes.pool_geometry((1, 6, 6, 2), 2.0, None, "valid")


def test_geometry_cache_is_bounded():
    for size in range(3, 3 + shapes._CACHE_SIZE + 10):
        shapes.conv_geometry((1, size, 3, 1), (1, 1, 1, 1), 1, "valid", 1)
    assert len(shapes._conv_cache) <= shapes._CACHE_SIZE


def test_layers_do_not_import_the_private_argument_module():
    import pathlib
    root = pathlib.Path(fastconv.__file__).parent / "keras"
    offenders = [str(path) for path in root.rglob("*.py") if "fastconv._args" in path.read_text()]
    assert offenders == []
