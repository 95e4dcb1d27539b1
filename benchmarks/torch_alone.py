"""PyTorch epochs of the seed and keras-cnn models, in a process without fastconv.

What a user who picks PyTorch gets: fastconv sets malloc and OpenMP options at import that speed
PyTorch up too, so the baseline runs alone. Same layers, optimizers and batch sizes as
fastconv/recipes.py, uint8 images converted to float32 per batch, 2 threads.

    python benchmarks/torch_alone.py [MNIST_DIR]      # default: data/mnist of this checkout
"""
import gzip
import pathlib
import sys
import time

import numpy as np
import torch
from torch import nn

MNIST = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[1] / "data" / "mnist")


def idx(name, offset):
    return np.frombuffer(gzip.open(MNIST / name).read(), np.uint8, offset=offset)


def model(name):
    if name == "seed":
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
        return net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7), 64
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
                        nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    return net, torch.optim.Adadelta(net.parameters(), lr=1.0, rho=0.95, eps=1e-7), 128


def main():
    x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    torch.set_num_threads(2)
    for name in ["seed", "keras-cnn"]:
        net, opt, batch = model(name)
        loss_fn = nn.CrossEntropyLoss()
        order = np.random.default_rng(0).permutation(len(x))
        start = time.perf_counter()
        for begin in range(0, len(x), batch):
            i = order[begin:begin + batch]
            xb = torch.from_numpy(x[i].astype(np.float32)) / 255.0
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), torch.from_numpy(y[i])).backward()
            opt.step()
        print(name, "torch alone", f"{time.perf_counter() - start:.1f} s/epoch", flush=True)


if __name__ == "__main__":
    main()
