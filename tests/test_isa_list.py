"""csrc/isa_list.h is the one list of instruction sets and per-set files: the build (setup.py) and the
kernel table (dispatch.c) follow it, so the sets the library reports, and the kernels each runs, are
the ones it names."""
import os
import platform
import re
from pathlib import Path

import pytest

import fastconv

LIST = Path(__file__).resolve().parent.parent / "csrc" / "isa_list.h"
pytestmark = pytest.mark.skipif(not LIST.exists(), reason="needs the source checkout")


def listed():
    text = LIST.read_text()
    isas = re.findall(r'^FC_ISA\((\w+), (\w+), "([^"]*)"\)', text, re.M)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        isas = isas[:1]  # the others are listed for x86-64 only
    return isas, re.findall(r'"(csrc/[^"]+\.c)"', text)


def test_the_library_has_the_listed_sets_best_first():
    isas, _ = listed()
    assert fastconv.ISAS == tuple(name for name, _, _ in reversed(isas))


def test_every_listed_file_exists():
    isas, per_set = listed()
    root = LIST.parent.parent
    files = per_set + [f"csrc/gemm/ukr_{ukernel}.c" for _, ukernel, _ in isas]
    files += [f"csrc/bench/peak_{name}.c" for name, _, _ in isas]
    assert [f for f in files if not (root / f).is_file()] == []


def test_each_set_runs_the_micro_kernel_the_list_names_for_it():
    isas, _ = listed()
    before = fastconv.get_isa()
    try:
        for name, ukernel, _ in isas:
            if name in fastconv.available_isas():
                fastconv.set_isa(name)
                assert fastconv.config()["kernels"]["gemm"] == ukernel
                assert fastconv.config()["kernels"]["conv2d_direct"].startswith(f"direct_{name}")
    finally:
        fastconv.set_isa(before)
