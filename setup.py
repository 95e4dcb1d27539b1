"""Builds fastconv._C: the Cython bindings plus the C kernels.

Portable sources are compiled for baseline x86-64 (no -march=native, so a wheel runs on any CPU);
only the files of each instruction set get that set's flags, and dispatch.c picks one set at run time.
csrc/isa_list.h lists the sets and those files, for this file and for dispatch.c's kernel table.
OpenMP is used when the compiler supports it; otherwise (or with FASTCONV_NO_OPENMP=1) the build is
single-threaded. Set FASTCONV_SANITIZE=1 to build with AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import os
import platform
import re
import sys
import tempfile

import numpy  # build requirement: the bindings read array data through its C API
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CCompilerError, CompileError, LinkError

CHECKOUT = os.path.dirname(os.path.abspath(__file__))
ISA_LIST = "csrc/isa_list.h"


def read_isa_list():
    """The instruction sets [(name, GEMM micro-kernel, flags)], worst first, and the files compiled once
    per set, from csrc/isa_list.h: the list dispatch.c's kernel table follows too."""
    with open(os.path.join(CHECKOUT, ISA_LIST)) as f:
        text = f.read()
    isas = [(name, gemm, flags.split()) for name, gemm, flags in
            re.findall(r'^FC_ISA\((\w+), (\w+), "([^"]*)"\)', text, re.M)]
    return isas, re.findall(r'"(csrc/[^"]+\.c)"', text)


def read_bf16_kernels():
    """The bfloat16 micro-kernels [(file, flags)] of csrc/isa_list.h's FC_BF16_GEMM lines."""
    with open(os.path.join(CHECKOUT, ISA_LIST)) as f:
        text = f.read()
    return [(f"csrc/gemm/ukr_{gemm}.c", flags.split())
            for _, gemm, flags in re.findall(r'^FC_BF16_GEMM\((\w+), (\w+), "([^"]*)"\)', text, re.M)]


ISAS, PER_ISA_SOURCES = read_isa_list()
BF16_KERNELS = read_bf16_kernels()


def isa_sources(name, gemm):
    """An instruction set's files: its micro-kernel, its FMA peak loop and every per-set file."""
    return [f"csrc/gemm/ukr_{gemm}.c", f"csrc/bench/peak_{name}.c"] + PER_ISA_SOURCES


PORTABLE_SOURCES = [
    "csrc/dispatch.c",
    "csrc/workspace.c",
    "csrc/gemm/gemm.c",
    "csrc/gemm/context.c",
    "csrc/conv/conv.c",  # the plan; the loops of each algorithm:
    "csrc/conv/im2col.c",
    "csrc/conv/implicit.c",
    "csrc/conv/direct_loops.c",
    "csrc/conv/winograd.c",
    "csrc/conv/conv_pool.c",  # a first conv fused with the max pooling after it
    "csrc/pool/pool.c",
    "csrc/train/train.c",
    "csrc/norm/norm.c",
    "csrc/image/affine.c",
    "csrc/gemm/pack_bf16.c",  # bfloat16 packing and the portable bf16 kernel (any CPU)
    "csrc/gemm/ukr_generic_bf16_4x16.c",
] + isa_sources(*ISAS[0][:2])  # the first set is the portable one, with the baseline flags

# Files compiled once more with an instruction set's flags: {isa: (sources, flags)}.
ISA_SOURCES = {name: (isa_sources(name, gemm), flags) for name, gemm, flags in ISAS[1:]}

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
COMMON_FLAGS = ["-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
SANITIZE = os.environ.get("FASTCONV_SANITIZE") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
# The shipped .so carries no symbol table or debug info (-s); FASTCONV_NO_STRIP=1 keeps them for a debugger.
STRIP_FLAGS = [] if SANITIZE or os.environ.get("FASTCONV_NO_STRIP") == "1" else ["-s"]

def compiler_accepts(compiler, flags):
    """True if the compiler can build and link a small OpenMP program with `flags`."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=flags)
        except (CCompilerError, CompileError, LinkError):
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        openmp = [] if os.environ.get("FASTCONV_NO_OPENMP") == "1" else ["-fopenmp"]
        if openmp and not compiler_accepts(self.compiler, openmp):
            print("fastconv: the compiler has no OpenMP; building single-threaded", file=sys.stderr)
            openmp = []
        flags = COMMON_FLAGS + openmp + (SANITIZE_FLAGS if SANITIZE else [])
        for ext in self.extensions:
            ext.extra_compile_args = flags
            ext.extra_link_args = openmp + (SANITIZE_FLAGS if SANITIZE else []) + STRIP_FLAGS
            if IS_X86_64:
                for isa, (sources, isa_flags) in ISA_SOURCES.items():
                    ext.extra_objects += self.compiler.compile(  # one folder per set: same source names
                        sources, output_dir=os.path.join(self.build_temp, isa), include_dirs=ext.include_dirs,
                        extra_postargs=flags + isa_flags, depends=ext.depends)
                for source, bf16_flags in BF16_KERNELS:  # each alone, with its own flags
                    if not compiler_accepts(self.compiler, flags + bf16_flags):  # e.g. gcc < 10: an empty kernel
                        print(f"fastconv: the compiler lacks {' '.join(bf16_flags)}; {source} is left out "
                              "and bfloat16 runs the float32 kernels", file=sys.stderr)
                        bf16_flags = []
                    ext.extra_objects += self.compiler.compile(
                        [source], output_dir=os.path.join(self.build_temp, "bf16"), include_dirs=ext.include_dirs,
                        extra_postargs=flags + bf16_flags, depends=ext.depends)
        super().build_extensions()


class BuildPy(build_py):
    """Also records where this checkout's vendored data sets are, so that a fastconv installed from it
    finds MNIST offline, from any directory (fastconv.datasets copies it into the user cache)."""

    def run(self):
        super().run()
        data = os.path.join(CHECKOUT, "data")
        # Wheels made to be shipped elsewhere (tools/build_wheel, cibuildwheel) set this to 0.
        record = os.environ.get("FASTCONV_RECORD_CHECKOUT", "1") != "0"
        if record and os.path.isdir(os.path.join(data, "mnist")):
            record = os.path.join(self.build_lib, "fastconv", "datasets", "_checkout.py")
            with open(record, "w") as f:
                f.write(f'"""Written by setup.py: the data folder of the checkout this was built from."""\n'
                        f"CHECKOUT_DATA = {data!r}\n")


extension = Extension(
    "fastconv._C",
    sources=["fastconv/_C.pyx"] + PORTABLE_SOURCES,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # The instruction-set files are linked as extra objects: listed here so editing one relinks.
    depends=[ISA_LIST, "csrc/fastconv.h", "csrc/dispatch.h", "csrc/gemm/gemm.h", "csrc/gemm/tuning.h",
             "csrc/gemm/bf16.h", "csrc/conv/direct.h", "csrc/workspace.h",
             "csrc/bench/peak.h", "csrc/train/elementwise.h", "csrc/pool/maxpool2x2.h",
             "csrc/norm/batchnorm.h"]
    + sorted({source for sources, _ in ISA_SOURCES.values() for source in sources})
    + [source for source, _ in BF16_KERNELS],
)

setup(
    ext_modules=cythonize([extension], compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
