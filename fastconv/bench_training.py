"""Training-speed benchmarks: one step, or one epoch, of the `seed`, `keras-cnn`, `mlp` and `cifar` models on
fastconv, on the NumPy backend, and on PyTorch (CPU) when it is installed.

The PyTorch models below are the same networks (NCHW, same layer sizes, same optimizers and
settings); every implementation gets uint8 images converted to float32 per batch. This module imports
neither fastconv nor PyTorch at the top: `fastconv bench` loads it by path in a PyTorch-only process.
"""
import math
import time

import numpy as np

MODELS = ("seed", "keras-cnn", "mlp", "cifar")


def image_shape(name):
    """(height, width, channels) of the uint8 images model `name` takes."""
    return (32, 32, 3) if name == "cifar" else (28, 28, 1)


def _torch_flip_translate():
    """The cifar recipe's RandomFlip("horizontal") and RandomTranslation(0.125, 0.125) (bilinear,
    reflected edges), active in training only: one affine resampling per batch."""
    import torch
    from torch import nn

    class FlipTranslate(nn.Module):
        def forward(self, x):
            if not self.training:
                return x
            n = x.shape[0]
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
            theta[:, 1, 1] = 1.0
            theta[:, :, 2] = (torch.rand(n, 2) * 2 - 1) * 0.25  # 0.125 of the size, in [-1, 1] coordinates
            grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
            return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                             align_corners=False)

    return FlipTranslate()


def torch_model(name):
    """The PyTorch twin of a fastconv recipe and its optimizer."""
    import torch
    from torch import nn
    if name == "seed":
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
        return net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    if name == "keras-cnn":
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                            nn.Linear(128, 10))
        return net, torch.optim.Adadelta(net.parameters(), lr=1.0, rho=0.95, eps=1e-7)
    if name == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 512),
                            nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))
        return net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    if name == "cifar":
        blocks, cin = [], 3
        for filters in (32, 64, 128):
            for _ in range(2):  # Keras' BatchNormalization: momentum 0.99 (PyTorch's 0.01), epsilon 1e-3
                blocks += [nn.Conv2d(cin, filters, 3, padding=1, bias=False),
                           nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.ReLU()]
                cin = filters
            blocks.append(nn.MaxPool2d(2))
        net = nn.Sequential(_torch_flip_translate(), *blocks, nn.Flatten(), nn.Dropout(0.3), nn.Linear(2048, 10))
        return net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


def fastconv_trainer(name, backend="fastconv"):
    """A function (images uint8 NHWC, labels) -> None doing one training step on `backend`."""
    from fastconv import keras, recipes
    model = recipes.RECIPES[name].compiled_model()

    def step(images, labels):
        keras.backend.set_backend(backend)  # the backend is global: trainers of both kinds may alternate
        model.train_on_batch(images, labels)

    return step


def torch_trainer(name):
    import torch
    net, optimizer = torch_model(name)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()

    def step(images, labels):
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), torch.from_numpy(labels.astype(np.int64)))
        loss.backward()
        optimizer.step()

    return step


def make_trainer(impl, name):
    if impl == "torch":
        return torch_trainer(name)
    return fastconv_trainer(name, backend="numpy" if impl == "numpy" else "fastconv")


def step_seconds(impl, name, batch_size, steps=10, warmup=2, seed=0):
    """Best time of one training step on random data of the model's image shape."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, *image_shape(name)), dtype=np.uint8)
    labels = rng.integers(0, 10, size=batch_size)
    step = make_trainer(impl, name)
    for _ in range(warmup):
        step(images, labels)
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step(images, labels)
        best = min(best, time.perf_counter() - start)
    return best


def epoch_seconds(impl, name, batch_size, images, labels, seed=0):
    """Wall time of one shuffled epoch over `images` (uint8 NHWC), after one warm-up step on a full batch
    and one on a batch of the epoch's last, partial size (as benchmarks/keras_scripts warm up)."""
    rng = np.random.default_rng(seed)
    step = make_trainer(impl, name)
    for size in {batch_size, len(images) % batch_size} - {0}:
        step(images[:size], labels[:size])
    order = rng.permutation(len(images))
    start = time.perf_counter()
    for begin in range(0, len(images), batch_size):
        index = order[begin:begin + batch_size]
        step(images[index], labels[index])
    return time.perf_counter() - start


def training_flops(model):
    """[(layer name, forward, input gradient, weight gradient)]: floating-point operations per image of one
    training step of `model`, a fastconv keras.Sequential with a known input shape, done the direct way.

    Counts 2 per multiply-add of the Conv2D, Conv2DTranspose and Dense layers, from their shapes: each pass
    (forward, gradient of the input, gradient of the kernel) does the forward's multiply-adds, and a layer
    with no trainable layer before it needs no input gradient. Winograd's fewer multiplies are not taken
    into account, nor is anything else (bias, activations, pooling, normalisation, the optimizer): the sum
    over the FMA peak is a floor under any direct or GEMM-based training step.
    """
    from fastconv.keras import layers as keras_layers
    from fastconv.keras.models import Model, Sequential
    if not isinstance(model, Sequential) or len(model.inputs or []) != 1:
        raise ValueError("model must be a fastconv keras.Sequential model that starts with a keras.Input")
    shape = tuple(model.inputs[0].shape)
    rows, first = [], True
    for layer in model.layers:
        if isinstance(layer, Model):
            raise ValueError(f"nested model {layer.name!r}: count the FLOPs of its layers instead")
        out = tuple(layer.compute_output_shape(shape))
        if isinstance(layer, keras_layers.Conv2DTranspose):
            # every input position scatters the whole (kh, kw, cout) kernel of its channel
            macs = math.prod(shape[1:]) * math.prod(layer.kernel.shape) // shape[-1]
        elif isinstance(layer, (keras_layers.Conv2D, keras_layers.Dense)):  # Dense: over any leading axes
            macs = math.prod(out[1:-1]) * math.prod(layer.kernel.shape)
        elif getattr(layer, "kernel", None) is not None:
            raise ValueError(f"cannot count the FLOPs of layer {layer.name!r} ({type(layer).__name__})")
        else:
            macs = 0  # elementwise, pooling, normalisation or reshaping work
        if macs:
            rows.append((layer.name, 2 * macs, 0 if first else 2 * macs, 2 * macs))
        first = first and not layer.trainable_weights
        shape = out
    return rows
