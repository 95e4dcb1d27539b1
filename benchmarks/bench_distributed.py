"""Data-parallel training on MPI: N ranks against one process, and against PyTorch's DDP (gloo).

    source venv/bin/activate     # mpi4py and mpiexec (pip install "fastconv[mpi]")
    python benchmarks/bench_distributed.py --torch-python /path/to/torch/venv/bin/python [--rounds 3]

The same as `fastconv bench distributed`; fastconv/bench_distributed.py says what each variant runs
and what each column means. Every variant runs in processes of its own, alternated round by round.
"""
import sys

from fastconv.bench import main

if __name__ == "__main__":
    sys.exit(main(["distributed", *sys.argv[1:]]))
