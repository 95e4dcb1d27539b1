"""PyTorch's column of `fastconv bench`, timed in a process of its own.

fastconv and PyTorch each load an OpenMP runtime, and importing fastconv sets OpenMP and malloc options
for its process. In one process the two runtimes' thread pools take the same cores and PyTorch runs with
fastconv's settings, so neither library is timed as a user would run it. The suite therefore starts this
file in a child process that never imports fastconv (`TorchProcess`), builds PyTorch's version of each
row there, and asks for one timing at a time, so the rounds still alternate with fastconv's.

The child speaks one JSON object per line on stdin/stdout:
    {"op": "setup", "threads": N, "training": PATH}  -> {"version": ..., "threads": N}
    {"op": "build", "row": SPEC}                        -> {"index": I}
    {"op": "time", "index": I, "min_time": S}           -> {"seconds": ...}
and answers {"error": MESSAGE} when a request fails. SPECs are made by the `*_spec` helpers below.
This module imports only the standard library and NumPy at the top; the parent side needs neither
fastconv nor PyTorch either.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time

# What `import fastconv` puts in the environment when the user has not (fastconv/__init__.py): the child
# is started without them, so that PyTorch runs with its own defaults.
FASTCONV_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}


def gemm_spec(m, k, n):
    return {"kind": "gemm", "m": m, "k": k, "n": n}


def conv_spec(direction, n, hw, cin, cout, padding):
    return {"kind": f"conv_{direction}", "n": n, "hw": hw, "cin": cin, "cout": cout, "padding": padding}


def pool_spec(which):
    """which: "fwd", "fwd_argmax" or "bwd", on the suite's n128 28x28x32 2x2 pool."""
    return {"kind": f"pool_{which}"}


def train_spec(model, batch, shape):
    return {"kind": "train", "model": model, "batch": batch, "shape": list(shape)}


class TorchProcess:
    """The parent's handle on the child: `timer(spec)` gives an object whose `seconds_per_call(min_time)`
    asks the child to time its version of the row."""

    def __init__(self, python, threads):
        env = {key: value for key, value in os.environ.items() if FASTCONV_ENVIRONMENT.get(key) != value}
        code = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
        self.process = subprocess.Popen([python, "-c", code, __file__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        training = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_training.py")
        try:
            answer = self.request(op="setup", threads=threads, training=training)
        except BaseException:
            self.close()  # a child that cannot set up (no PyTorch) must not outlive the error
            raise
        self.version, self.threads = answer["version"], answer["threads"]

    def request(self, **message):
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise RuntimeError(f"the PyTorch process ended (exit code {self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"PyTorch process: {answer['error']}")
        return answer

    def timer(self, spec):
        return _RemoteRow(self, self.request(op="build", row=spec)["index"])

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


class _RemoteRow:
    def __init__(self, process, index):
        self.process, self.index = process, index

    def seconds_per_call(self, min_time):
        return self.process.request(op="time", index=self.index, min_time=min_time)["seconds"]


# ---- the child ----------------------------------------------------------------------------------------

def seconds_per_call(fn, min_time=0.05, batch_time=1e-3):
    """fastconv.bench.seconds_per_call, repeated here because the child may not import fastconv: the
    fastest batch of calls lasting about `batch_time` each, over about `min_time`."""
    def batch(calls):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start

    fn()
    calls = 1
    while (elapsed := batch(calls)) < batch_time:
        calls = max(calls * 2, int(calls * batch_time / max(elapsed, 1e-9)) + 1)
    best, total = elapsed / calls, elapsed
    while total < min_time:
        elapsed = batch(calls)
        best, total = min(best, elapsed / calls), total + elapsed
    return best


def build(torch, training, spec, rng):
    """A no-argument callable doing PyTorch's work for one row (the suite's shapes, NCHW)."""
    import numpy as np
    F = torch.nn.functional
    kind = spec["kind"]
    if kind == "gemm":
        a = torch.from_numpy(rng.standard_normal((spec["m"], spec["k"]), dtype=np.float32))
        b = torch.from_numpy(rng.standard_normal((spec["k"], spec["n"]), dtype=np.float32))
        return lambda: torch.mm(a, b)
    if kind.startswith("conv_"):
        n, hw, cin, cout = spec["n"], spec["hw"], spec["cin"], spec["cout"]
        pad = 1 if spec["padding"] == "same" else 0
        x = torch.from_numpy(rng.standard_normal((n, cin, hw, hw), dtype=np.float32)).requires_grad_(True)
        w = torch.from_numpy(rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)).requires_grad_(True)
        b = torch.from_numpy(rng.standard_normal(cout, dtype=np.float32)).requires_grad_(True)
        if kind == "conv_fwd":
            def forward():
                with torch.no_grad():
                    return torch.relu(F.conv2d(x, w, b, padding=pad))
            return forward
        out = F.conv2d(x, w, b, padding=pad)
        dy = torch.from_numpy(rng.standard_normal(tuple(out.shape), dtype=np.float32))
        return lambda: torch.autograd.grad(out, (x, w, b), dy, retain_graph=True)
    if kind.startswith("pool_"):
        x = torch.from_numpy(rng.standard_normal((128, 32, 28, 28), dtype=np.float32)).requires_grad_(True)
        if kind == "pool_fwd":
            def forward():
                with torch.no_grad():
                    return F.max_pool2d(x, 2)
            return forward
        if kind == "pool_fwd_argmax":
            return lambda: F.max_pool2d_with_indices(x, 2)
        out = F.max_pool2d(x, 2)
        dy = torch.from_numpy(rng.standard_normal(tuple(out.shape), dtype=np.float32))
        return lambda: torch.autograd.grad(out, x, dy, retain_graph=True)
    if kind == "train":
        images = rng.integers(0, 256, size=(spec["batch"], *spec["shape"]), dtype=np.uint8)
        labels = rng.integers(0, 10, size=spec["batch"])
        step = training.torch_trainer(spec["model"])
        return lambda: step(images, labels)
    raise ValueError(f"unknown row kind {kind!r}")


def child_main():
    import numpy as np
    torch = training = None
    rng = np.random.default_rng(0)
    rows = []
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request["op"] == "setup":
                import torch
                torch.set_num_threads(request["threads"])
                spec = importlib.util.spec_from_file_location("bench_training", request["training"])
                training = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(training)
                answer = {"version": torch.__version__, "threads": torch.get_num_threads()}
            elif request["op"] == "build":
                rows.append(build(torch, training, request["row"], rng))
                answer = {"index": len(rows) - 1}
            elif request["op"] == "time":
                answer = {"seconds": seconds_per_call(rows[request["index"]], request["min_time"])}
            else:
                raise ValueError(f"unknown request {request['op']!r}")
        except Exception as exc:  # reported to the parent, which stops the suite with it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    child_main()
