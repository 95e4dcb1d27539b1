"""Data-parallel training speed on MPI: `fastconv bench distributed` (also benchmarks/bench_distributed.py).

Per model, six variants, each timed in processes of its own, alternated round by round:

    fastconv 1      one process, `--threads` threads, batch B, fit on one process
    fastconv N      `mpiexec -n N python -m mpi4py`, `--threads` threads per rank, a DataParallel fit
                    with global batch N x B (B per rank)
    independent N   N copies of "fastconv 1" at once, without MPI: what the machine allows N processes
                    (shared caches, memory bandwidth, other load); its step is the slowest copy's
    lockstep N      N copies of "fastconv 1" under mpiexec, each training alone on its own data (no
                    gradient reduction) but waiting for the others at an MPI barrier after every step:
                    what any synchronous data-parallel training reaches on this machine, the ceiling of
                    N ranks' efficiency (each step lasts as long as the slowest process's, so a core
                    disturbed by the host at a random moment holds up every process)
    PyTorch 1       one process, same threads and batch B (when a PyTorch Python is given)
    PyTorch N       N processes under DistributedDataParallel with the gloo backend, batch B each

and reports, best of the rounds: images/s, images/s per rank, fastconv's gradient reduction per step and its share of
the step (fastconv.keras.distributed.timings(): the gradient buckets' work during the backward pass
and the wait for them after it, which includes waiting for the slower rank), the same reduction timed
alone after a barrier (all buckets at once), and fastconv N against PyTorch N. The weak-scaling
efficiency (images/s per rank on N ranks over one process's images/s) is taken round by round, each
N-rank run against the one-process run of its own round (run next to it, under the same load), and
reported as the median over the rounds with every round shown, next to the best N-rank run over the
best one-process run. The rounds alternate the variants' order, so that neither side always runs first.
On a shared machine the ranks wait for each other whenever another process takes a core from one of
them, which one process alone absorbs, so the efficiency is also given on the undisturbed steps: those
in which no process of the run waited for a CPU (Linux's /proc/<pid>/task/*/schedstat, run-queue wait
under 0.1 ms on every rank), their median step against the one process's undisturbed median, per round.

A step's time is the median, over the timed steps, of the time from one batch's end to the next on
rank 0 (everything a fit does per batch); images/s is the global batch over it. Each process of a
PyTorch variant imports PyTorch and never fastconv: the worker runs this file by path, and this module
imports only the standard library and NumPy at the top.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("seed", "keras-cnn")
# What `import fastconv` puts in the environment (fastconv/__init__.py); PyTorch runs without it.
FASTCONV_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}
RUN_BY_PATH = ("import runpy, sys; sys.path.pop(0); sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


# ----- workers (one per process) -----

def _data(per_rank, ranks, steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    count = per_rank * ranks * steps
    return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8), rng.integers(0, 10, size=count)


def _shape(model):
    return (32, 32, 3) if model == "cifar" else (28, 28, 1)


QUIET_WAIT = 1e-4  # a step in which no process waited longer than this for a CPU counts as undisturbed
QUIET_MIN_STEPS = 5


def _cpu_wait_seconds():
    """The seconds this process's threads have spent ready to run but waiting for a CPU (another
    process had it): Linux's /proc schedstat, or None where the kernel does not tell."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def _quiet_step(steps, waits):
    """The median of the steps in which no process waited for a CPU (`waits`: each step's longest
    wait over the processes), and how many there were; None when too few to tell."""
    if any(w is None for w in waits):
        return None, 0
    quiet = [step for step, wait in zip(steps, waits) if wait < QUIET_WAIT]
    return (statistics.median(quiet) if len(quiet) >= QUIET_MIN_STEPS else None), len(quiet)


def fastconv_worker(model, per_rank, steps, warmup, threads, reduce_repeats=20, lockstep=False):
    """One fastconv process: a fit of warmup + steps batches (a DataParallel fit under mpiexec, or with
    `lockstep` a fit of its own that waits for the other processes after every batch)."""
    import fastconv
    from fastconv import keras, recipes
    from fastconv.keras import distributed
    fastconv.set_num_threads(threads)
    ranks = 1
    if distributed.launched_by_mpi():
        ranks = distributed.size()
        if not lockstep:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
    keras.utils.set_random_seed(0)
    net = recipes.RECIPES[model].compiled_model()
    images, labels = _data(per_rank, 1 if lockstep else ranks, warmup + steps, _shape(model),
                           seed=distributed.rank() if lockstep else 0)
    marks, waits = [], []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if lockstep:
                distributed.barrier()
            marks.append(time.perf_counter())
            waits.append(_cpu_wait_seconds())
            if batch == warmup - 1 and ranks > 1:
                distributed.timings(reset=True)

    net.fit(images, labels, batch_size=per_rank * (1 if lockstep else ranks), epochs=1, verbose=0,
            callbacks=[Clock()])
    steps_seconds = np.diff(marks[warmup - 1:])
    step = statistics.median(steps_seconds)
    step_waits = [None if a is None or b is None else b - a for a, b in zip(waits[warmup - 1:], waits[warmup:])]
    if ranks > 1:  # a step is undisturbed when no rank waited for a CPU in it
        every = distributed.allgather_object(step_waits)
        step_waits = [None if None in column else max(column) for column in zip(*every)]
    quiet, quiet_count = _quiet_step(steps_seconds, step_waits)
    result = {"impl": "lockstep" if lockstep else "fastconv", "model": model, "ranks": ranks,
              "threads": fastconv.get_num_threads(), "step_seconds": step, "images_per_second": per_rank * ranks / step,
              "quiet_step_seconds": quiet, "quiet_steps": quiet_count, "steps": len(steps_seconds),
              "parameters": int(sum(w.size for w in net.trainable_weights))}
    if ranks > 1 and lockstep:
        if distributed.rank() != 0:
            return
    elif ranks > 1:
        spent = distributed.timings()
        result["reduce_seconds"] = spent["reduce_seconds"] / max(spent["reductions"], 1)
        result["reduce_share"] = spent["reduce_seconds"] / spent["step_seconds"]
        # the same reduction alone, all ranks starting together: the communication without the wait
        variables = net.trainable_weights
        grads = [np.zeros(v.shape, np.float32) for v in variables]
        alone = []
        for _ in range(reduce_repeats):
            distributed.barrier()
            start = time.perf_counter()
            distributed.reduce_gradients(grads, variables, copy=False)  # as DistributedOptimizer does
            alone.append(time.perf_counter() - start)
        result["reduce_alone_seconds"] = min(alone)
        if distributed.rank() != 0:
            return
    print(json.dumps(result), flush=True)


def torch_worker(model, per_rank, steps, warmup, threads, training_path):
    """One PyTorch process; under DistributedDataParallel (gloo) when RANK and WORLD_SIZE are set."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location("bench_training", training_path)
    training = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(training)
    torch.set_num_threads(threads)
    ranks, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    net, optimizer = training.torch_model(model)
    if ranks > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
        net = DistributedDataParallel(net)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    images, labels = _data(per_rank, 1, warmup + steps, _shape(model), seed=rank)
    marks = []
    for index in range(warmup + steps):
        batch = slice(index * per_rank, (index + 1) * per_rank)
        x = torch.from_numpy(images[batch].transpose(0, 3, 1, 2).astype(np.float32)) / 255.0
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), torch.from_numpy(labels[batch].astype(np.int64))).backward()
        optimizer.step()
        marks.append(time.perf_counter())
    step = statistics.median(np.diff(marks[warmup - 1:]))
    if ranks > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(json.dumps({"impl": "torch", "model": model, "ranks": ranks, "threads": torch.get_num_threads(),
                          "version": torch.__version__, "step_seconds": step,
                          "images_per_second": per_rank * ranks / step}), flush=True)


# ----- the parent: launch, alternate, report -----

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_line(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in the worker's output:\n{text}")


def run_variant(variant, model, args):
    """Start one variant's processes; return rank 0's result and the load average before and after."""
    impl, ranks = variant
    worker = [model, str(args.batch), str(args.steps), str(args.warmup), str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    load_before = os.getloadavg()[0]
    if impl in ("fastconv", "lockstep"):
        command = [sys.executable, "-m", "fastconv.bench_distributed", "--worker", impl, *worker]
        if ranks > 1:
            command = [args.mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", *command[1:]]
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
        outputs = [out]
    elif impl == "independent":  # N single fastconv processes at once, no MPI: the machine's own limit
        command = [sys.executable, "-m", "fastconv.bench_distributed", "--worker", "fastconv", *worker]
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(ranks)]
        streams = [p.communicate(timeout=args.timeout) for p in processes]
        outputs = [subprocess.CompletedProcess(command, p.returncode, *io) for p, io in zip(processes, streams)]
    else:
        env = {key: value for key, value in env.items() if FASTCONV_ENVIRONMENT.get(key) != value}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(ranks))
        command = [args.torch_python, "-c", RUN_BY_PATH, os.path.abspath(__file__), "--worker", "torch", *worker,
                   os.path.join(HERE, "bench_training.py")]
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                      env=dict(env, RANK=str(r))) for r in range(ranks)]
        outputs = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=args.timeout)
            outputs.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    for out in outputs:
        if out.returncode != 0:
            raise RuntimeError(f"{impl} x{ranks} {model} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = _json_line(outputs[0].stdout)
    if impl == "independent":  # the slowest process's step, as a synchronous step would wait for it
        each = [_json_line(out.stdout) for out in outputs]
        slowest = max(each, key=lambda r: r["step_seconds"])
        quiet = [r["quiet_step_seconds"] for r in each]
        result.update(ranks=ranks, step_seconds=slowest["step_seconds"],
                      images_per_second=args.batch * ranks / slowest["step_seconds"],
                      quiet_step_seconds=None if None in quiet else max(quiet),
                      quiet_steps=min(r["quiet_steps"] for r in each))
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def variants(args):
    found = [("fastconv", 1), ("fastconv", args.ranks), ("independent", args.ranks), ("lockstep", args.ranks)]
    if args.torch_python:
        found += [("torch", 1), ("torch", args.ranks)]
    return found


def _ms(seconds):
    return f"{seconds * 1e3:.1f}"


def report(results, args, print_table):
    """Tables of the best round of each variant, and the ratios round by round."""
    n = args.ranks
    rows, ratios = [], []
    for model in args.models:
        best = {}
        for variant in variants(args):
            runs = results[model][variant]
            best[variant] = min(runs, key=lambda r: r["step_seconds"])
        for (impl, ranks), r in best.items():
            name = ("fastconv" if impl != "torch" else f"PyTorch {r.get('version', '')}".strip()) + \
                   (f", {ranks} ranks" if ranks > 1 else ", 1 process") + \
                   (" (DDP, gloo)" if impl == "torch" and ranks > 1 else "")
            if impl == "independent":
                name = f"fastconv, {ranks} independent processes (no MPI)"
            elif impl == "lockstep":
                name = f"fastconv, {ranks} processes in lockstep (a barrier per step, no reduction)"
            rounds = " ".join(f"{x['images_per_second']:.0f}" for x in results[model][(impl, ranks)])
            reduce = share = alone = ""
            if "reduce_seconds" in r:
                reduce, share = _ms(r["reduce_seconds"]), f"{100 * r['reduce_share']:.0f}%"
                alone = _ms(r["reduce_alone_seconds"])
            quiet = ""
            if r.get("quiet_steps") is not None and "steps" in r:
                quiet = f"{r['quiet_steps']}/{r['steps']}" + \
                    (f": {_ms(r['quiet_step_seconds'])}" if r.get("quiet_step_seconds") else "")
            rows.append([model, name, ranks * args.batch, _ms(r["step_seconds"]), f"{r['images_per_second']:.0f}",
                         f"{r['images_per_second'] / ranks:.0f}", reduce, share, alone, quiet, rounds])
        single, multi = best[("fastconv", 1)], best[("fastconv", n)]
        # Each round's N-rank and independent runs against that round's one process (run next to them,
        # under the same load): the median of the rounds is the headline, their range its spread.
        per_round = _per_round(results[model], ("fastconv", n), n)
        independent = _per_round(results[model], ("independent", n), n)
        lockstep = _per_round(results[model], ("lockstep", n), n)
        best_ratio = multi["images_per_second"] / n / single["images_per_second"]
        # the same on the steps no process had to wait for a CPU in (another process had it)
        quiet = [s["quiet_step_seconds"] / m["quiet_step_seconds"]
                 for s, m in zip(results[model][("fastconv", 1)], results[model][("fastconv", n)])
                 if s.get("quiet_step_seconds") and m.get("quiet_step_seconds")]
        line = [model, f"{statistics.median(per_round):.0%}", " ".join(f"{x:.0%}" for x in per_round),
                f"{best_ratio:.0%}", f"{statistics.median(quiet):.0%}" if quiet else "-",
                " ".join(f"{x:.0%}" for x in quiet), f"{statistics.median(independent):.0%}",
                " ".join(f"{x:.0%}" for x in independent), f"{statistics.median(lockstep):.0%}",
                " ".join(f"{x:.0%}" for x in lockstep)]
        if args.torch_python:
            t1, tn = best[("torch", 1)], best[("torch", n)]
            line += [f"{tn['images_per_second'] / n / t1['images_per_second']:.0%}",
                     f"{multi['images_per_second'] / tn['images_per_second']:.2f}x"]
        ratios.append(line)
    print_table(["model", "variant", "global batch", "step ms", "images/s", "images/s per rank",
                 "reduce ms/step", "reduce share", "reduce alone ms", "undisturbed steps: median ms",
                 "images/s per round"], rows)
    print()
    header = ["model", f"fastconv efficiency {n} ranks (median of rounds)", "per round", "best / best",
              "undisturbed steps (median)", "per round", f"{n} independent processes (median)", "per round",
              f"{n} processes in lockstep (median)", "per round"]
    if args.torch_python:
        header += [f"PyTorch DDP efficiency {n} ranks", f"fastconv {n} ranks / PyTorch DDP {n}"]
    print_table(header, ratios)


def _per_round(runs, variant, ranks):
    """Per round: the variant's images/s per rank over the same round's one-process images/s."""
    return [other["images_per_second"] / ranks / single["images_per_second"]
            for single, other in zip(runs[("fastconv", 1)], runs[variant])]


def add_options(parser):
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the distributed variants (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (default: 1)")
    parser.add_argument("--batch", type=int, default=64, help="batch per rank (default: 64)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run (default: 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds, each running every variant, in alternating order (default: 5)")
    parser.add_argument("--mpiexec", default=None,
                        help="the MPI launcher (default: the mpiexec next to this Python, else on PATH)")
    parser.add_argument("--torch-python", metavar="PYTHON", default=None,
                        help="a Python with PyTorch, for the PyTorch rows (run in processes of their own)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is given up")
    parser.add_argument("--json", metavar="PATH", help="also write every run's result as JSON")


def run(args, print_table, stamp):
    if args.mpiexec is None:
        beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        args.mpiexec = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if args.mpiexec is None:
        raise SystemExit("no mpiexec found: pip install \"fastconv[mpi]\", or give --mpiexec")
    if args.warmup < 1 or args.steps < 2 or args.ranks < 2:
        raise SystemExit("--warmup must be >= 1, --steps >= 2 and --ranks >= 2")
    print(stamp(), flush=True)
    print(f"{args.ranks} ranks x {args.threads} thread(s) against 1 process x {args.threads}; batch {args.batch} "
          f"per rank; median step of {args.steps} after {args.warmup}; {args.rounds} rounds, alternated; "
          "efficiency: the median over rounds of N ranks against the same round's 1 process",
          flush=True)
    started = time.time()
    results = {model: {variant: [] for variant in variants(args)} for model in args.models}
    loads = []
    for round_index in range(args.rounds):
        for model in args.models:
            order = variants(args) if round_index % 2 == 0 else list(reversed(variants(args)))
            for variant in order:
                result = run_variant(variant, model, args)
                results[model][variant].append(result)
                loads.extend(result["load"])
                print(f"  round {round_index + 1} {model} {variant[0]} x{variant[1]}: "
                      f"{result['images_per_second']:.0f} images/s, load {result['load'][0]:.2f}", flush=True)
    print(f"{time.strftime('%H:%M', time.gmtime(started))}-{time.strftime('%H:%M', time.gmtime())} UTC; "
          f"load average (1 min) {min(loads):.2f} to {max(loads):.2f} during the runs", flush=True)
    report(results, args, print_table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({model: {f"{impl} x{ranks}": runs for (impl, ranks), runs in by_variant.items()}
                       for model, by_variant in results.items()}, f, indent=1)
    return 0


def worker_main(argv):
    impl, model, batch, steps, warmup, threads = argv[:6]
    if impl in ("fastconv", "lockstep"):
        fastconv_worker(model, int(batch), int(steps), int(warmup), int(threads), lockstep=impl == "lockstep")
    else:
        torch_worker(model, int(batch), int(steps), int(warmup), int(threads), argv[6])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
    else:
        from fastconv.bench import main
        sys.exit(main(["distributed", *sys.argv[1:]]))
