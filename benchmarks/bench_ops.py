"""conv2d, conv2d_transpose and max-pooling, fastconv against fastconv.reference (and PyTorch CPU when
installed).

Run: python -m pytest benchmarks/bench_ops.py --benchmark-group-by=group --benchmark-columns=min,median,rounds
Each shape's group holds every implementation on the same data; NHWC<->NCHW conversions for PyTorch
happen outside the timed region.
"""
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.bench_suite import torch_or_none

from conftest import record_rate



# (name, batch, height/width, cin, cout, padding): the MNIST-sized layers of our models, and the
# one-channel output layer of keras.io's denoising autoencoder.
CONV_SHAPES = {
    "n128_28x28_1to32_same": (128, 28, 1, 32, "same"),
    "n128_28x28_32to64_same": (128, 28, 32, 64, "same"),
    "n128_14x14_32to64_same": (128, 14, 32, 64, "same"),
    "n128_14x14_64to64_same": (128, 14, 64, 64, "same"),
    "n32_56x56_64to64_same": (32, 56, 64, 64, "same"),
    "n128_28x28_1to32_valid": (128, 28, 1, 32, "valid"),
    "n128_26x26_32to64_valid": (128, 26, 32, 64, "valid"),
    "n128_28x28_32to1_same": (128, 28, 32, 1, "same"),
}
IMPLS = ["fastconv", "numpy", "torch"]


def conv_data(shape, rng):
    n, hw, cin, cout, padding = CONV_SHAPES[shape]
    x = rng.standard_normal((n, hw, hw, cin)).astype(np.float32)
    w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b, padding


def conv_flops(x, w, y):
    return 2.0 * y.size * w.shape[0] * w.shape[1] * w.shape[2]


def torch_conv(torch, x, w, b, padding):
    """PyTorch NCHW tensors for the same conv; 'same' at stride 1 with a 3x3 kernel pads 1."""
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    pad = 1 if padding == "same" else 0
    return tx, tw, tb, pad


def skip_without(impl):
    torch = torch_or_none()  # with fastconv's thread count
    if impl == "torch" and torch is None:
        pytest.skip("PyTorch not installed (pip install torch==2.13.0)")
    return torch


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(CONV_SHAPES))
def test_conv2d_forward(benchmark, num_threads, rng, shape, impl):
    torch = skip_without(impl)
    x, w, b, padding = conv_data(shape, rng)
    benchmark.group = f"conv2d forward {shape}"
    if impl == "fastconv":
        y = benchmark(fastconv.conv2d, x, w, b, padding=padding, activation="relu")
    elif impl == "numpy":
        y = benchmark.pedantic(reference.conv2d, (x, w, b), dict(padding=padding, activation="relu"), rounds=3)
    else:
        tx, tw, tb, pad = torch_conv(torch, x, w, b, padding)
        with torch.no_grad():
            benchmark(lambda: torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=pad)))
        y = fastconv.conv2d(x, w, b, padding=padding)
    record_rate(benchmark, "gflops", conv_flops(x, w, y))


@pytest.mark.parametrize("impl", ["fastconv", "torch"])
@pytest.mark.parametrize("shape", [s for s in CONV_SHAPES if CONV_SHAPES[s][2] == 1])
def test_conv2d_backward_first_layer_without_dx(benchmark, num_threads, rng, shape, impl):
    """The input layer: only dw and db (fastconv need_dx=False; PyTorch with x not requiring grad)."""
    torch = skip_without(impl)
    x, w, b, padding = conv_data(shape, rng)
    y = fastconv.conv2d(x, w, b, padding=padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    benchmark.group = f"conv2d backward without dx {shape}"
    if impl == "fastconv":
        benchmark(fastconv.conv2d_backward, dy, x, w, padding=padding, need_dx=False)
    else:
        tx, tw, tb, pad = torch_conv(torch, x, w, b, padding)
        tx.requires_grad_(False)
        tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
        out = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
        benchmark(lambda: torch.autograd.grad(out, (tw, tb), tdy, retain_graph=True))
    record_rate(benchmark, "gflops", conv_flops(x, w, y))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(CONV_SHAPES))
def test_conv2d_backward(benchmark, num_threads, rng, shape, impl):
    torch = skip_without(impl)
    x, w, b, padding = conv_data(shape, rng)
    y = fastconv.conv2d(x, w, b, padding=padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    benchmark.group = f"conv2d backward {shape}"
    if impl == "fastconv":
        benchmark(fastconv.conv2d_backward, dy, x, w, padding=padding)
    elif impl == "numpy":
        benchmark.pedantic(reference.conv2d_backward, (dy, x, w), dict(padding=padding), rounds=3)
    else:
        tx, tw, tb, pad = torch_conv(torch, x, w, b, padding)
        tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
        out = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
        benchmark(lambda: torch.autograd.grad(out, (tx, tw, tb), tdy, retain_graph=True))
    record_rate(benchmark, "gflops", 2 * conv_flops(x, w, y))


# (batch, height/width, cin, cout): a decoder's upsampling layer and its 1-channel output layer, 3x3 stride 2
CONV_TRANSPOSE_SHAPES = {"n128_7x7_64to32": (128, 7, 64, 32), "n128_14x14_32to1": (128, 14, 32, 1)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(CONV_TRANSPOSE_SHAPES))
def test_conv2d_transpose(benchmark, num_threads, rng, shape, impl):
    """3x3, stride 2, "same". PyTorch's output has one more row and column (TensorFlow's "same" cuts it)."""
    torch = skip_without(impl)
    n, hw, cin, cout = CONV_TRANSPOSE_SHAPES[shape]
    x = rng.standard_normal((n, hw, hw, cin)).astype(np.float32)
    w = rng.standard_normal((3, 3, cout, cin)).astype(np.float32)
    benchmark.group = f"conv2d_transpose stride 2 {shape}"
    if impl == "torch":
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        with torch.no_grad():
            benchmark(torch.nn.functional.conv_transpose2d, tx, tw, stride=2)
    else:
        ops = fastconv if impl == "fastconv" else reference
        benchmark(ops.conv2d_transpose, x, w, strides=2, padding="same")
    record_rate(benchmark, "gflops", 2.0 * x.size * 9 * cout)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_maxpool2d(benchmark, num_threads, rng, direction, impl):
    torch = skip_without(impl)
    x = rng.standard_normal((128, 28, 28, 32)).astype(np.float32)
    dy = rng.standard_normal((128, 14, 14, 32)).astype(np.float32)
    benchmark.group = f"maxpool2d 2x2 {direction} n128_28x28x32"
    if impl == "torch":
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
        if direction == "forward":
            with torch.no_grad():
                benchmark(torch.nn.functional.max_pool2d, tx, 2)
        else:
            out = torch.nn.functional.max_pool2d(tx, 2)
            tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
            benchmark(lambda: torch.autograd.grad(out, tx, tdy, retain_graph=True))
    else:
        ops = fastconv if impl == "fastconv" else reference
        if direction == "forward":
            benchmark(ops.maxpool2d, x, 2)
        else:  # from the argmax a training forward pass records, as PyTorch's backward uses its indices
            argmax = ops.maxpool2d(x, 2, return_argmax=True)[1]
            benchmark(ops.maxpool2d_backward, dy, x, 2, argmax=argmax)
    moved = x.nbytes + dy.nbytes if direction == "forward" else 2 * x.nbytes + dy.nbytes
    record_rate(benchmark, "gb_per_s", moved)
