"""The AVX-512 micro-kernels on any x86-64 CPU: their own code (csrc/gemm/ukr_avx512_14x32.c and
ukr_avx512_bf16_14x32.c), built against tests/emulated_avx512/immintrin.h, whose intrinsics compute each
lane as the Intel SDM defines the instruction, held bit for bit to NumPy models: a chain of FMAs for
float32, VDPBF16PS's arithmetic for bfloat16 (tests/bf16_model.py). What this checks is the kernels' logic
(A's layouts, the bf16 pairs, K tails, partial tiles, masks and the write-back), on CI machines that lack
AVX-512 or AVX512_BF16; the library runs each kernel only on CPUs that have its instructions."""
import ctypes
import platform
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from bf16_model import emulate_vdpbf16ps

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
MR, NR = 14, 32


def c_compiler():
    configured = shlex.split(sysconfig.get_config_var("CC") or "")
    for candidate in ([configured[0]] if configured else []) + ["cc", "gcc", "clang"]:
        if shutil.which(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the AVX-512 kernel files compile to nothing outside x86-64")
    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler to build the emulated kernel with")
    library = tmp_path_factory.mktemp("emulated_avx512") / "avx512_kernels.so"
    # -O0: the unrolled tile loops over emulated intrinsics take seconds to optimise, and run fast enough
    sources = [HERE / "emulated_avx512" / "bf16_kernel.c", HERE / "emulated_avx512" / "f32_kernel.c",
               CHECKOUT / "csrc" / "gemm" / "pack_bf16.c"]
    command = [compiler, "-O0", "-std=gnu11", "-ffp-contract=off", "-Wno-psabi", "-fPIC", "-shared",
               "-D__AVX512BF16__=1", f"-I{HERE / 'emulated_avx512'}", *map(str, sources), "-o", str(library), "-lm"]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    lib = ctypes.CDLL(str(library))
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    epilogue = [ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_float, pointer, ctypes.c_int]
    lib.emulated_bf16_tile.argtypes = [i64, pointer, i64, i64, pointer, i64, pointer, i64] + epilogue
    lib.emulated_f32_tile.argtypes = [i64, pointer, i64, i64, pointer, pointer, i64, pointer, i64] + epilogue
    lib.fc_gemm_pack_bf16.argtypes = [pointer, i64, i64, i64, i64, i64, ctypes.c_int, i64, pointer]
    for kind in ("bf16", "f32"):
        assert (getattr(lib, f"emulated_{kind}_mr")(), getattr(lib, f"emulated_{kind}_nr")()) == (MR, NR)
    return lib


def address(array):
    return None if array is None else array.ctypes.data


def packed_b(lib, b, row_words):
    """B (k x n, n <= NR) in the kernel's bf16 pairs: one panel, `row_words` words from a pair to the next
    (the words past NR hold NaN bits, which the kernel must not read)."""
    k, source = b.shape[0], np.ascontiguousarray(b, dtype=np.float32)  # kept alive through the call
    panel = np.full(((k + 1) // 2, row_words), 0x7FC07FC0, dtype=np.uint32)
    staged = np.zeros(((k + 1) // 2, NR), dtype=np.uint32)
    lib.fc_gemm_pack_bf16(address(source), 1, b.shape[1], 0, b.shape[1], k, NR, NR * ((k + 1) // 2), address(staged))
    panel[:, :NR] = staged
    return panel


def f32_panel(b, row_floats):
    """B (k x n, n <= NR) as the float32 kernel reads a panel: k steps `row_floats` apart, NaN past n."""
    panel = np.full((b.shape[0], row_floats), np.nan, dtype=np.float32)
    panel[:, :b.shape[1]] = b
    return panel


def laid_out(a_tile, layout):
    """The MR x k tile A as the kernel may find it: (buffer, rs_a, cs_a). Whatever is not A (rows past m,
    padding between rows or columns) is NaN: none of it may reach C."""
    rows, k = a_tile.shape
    full = np.full((MR, k), np.nan, dtype=np.float32)
    full[:rows] = a_tile
    if layout == "row-major":      # a Dense layer's input, read in place: lda > k
        lda = k + 3
        buf = np.full(MR * lda, np.nan, dtype=np.float32)
        buf.reshape(MR, lda)[:, :k] = full
        return buf, lda, 1
    if layout == "packed":         # gemm.c's packed A panel: a k step's MR rows together
        return np.ascontiguousarray(full.T).reshape(-1), 1, MR
    if layout == "column-major":   # a transposed A read in place: ld > MR
        ld = MR + 5
        buf = np.full(k * ld, np.nan, dtype=np.float32)
        buf.reshape(k, ld)[:, :MR] = full.T
        return buf, 1, ld
    buf = np.full(MR * k * 2 + 1, np.nan, dtype=np.float32)  # neither stride 1: the scalar path
    for i in range(MR):
        buf[i * 2 * k + np.arange(k) * 2 + 1] = full[i]
    return buf[1:], 2 * k, 2


def run(lib, a_tile, b, layout, *, kind="bf16", alpha=1.0, beta=0.0, c=None, bias=None, relu=False,
        row_words=NR, a_next=False):
    """A kernel's m x n tile of C, written into a larger C whose every other element must stay as it was;
    returns (the tile, C before, C after). row_words: the B panel's words (floats) from one pair of k
    steps (one k step) to the next."""
    m, n = a_tile.shape[0], b.shape[1]
    a, rs_a, cs_a = laid_out(a_tile, layout)
    ldc = n + 7
    before = np.full((MR + 2, ldc), -7.25, dtype=np.float32)
    if c is not None:
        before[:m, :n] = c
    after = before.copy()
    if kind == "bf16":
        panel = packed_b(lib, b, row_words)
        lib.emulated_bf16_tile(b.shape[0], address(a), rs_a, cs_a, address(panel), row_words, address(after), ldc,
                               m, n, alpha, beta, address(bias), int(relu))
    else:
        panel = f32_panel(b, row_words)
        lib.emulated_f32_tile(b.shape[0], address(a), rs_a, cs_a, address(a) if a_next else None, address(panel),
                              row_words, address(after), ldc, m, n, alpha, beta, address(bias), int(relu))
    return after[:m, :n], before, after


def fma_chain(a, b):
    """A @ B as the float32 kernel sums it: acc = fma(a[i, p], b[p, j], acc) for p in order, each step
    rounded once (a product and a float32 sum are exact in x87's 64-bit significand, but for terms too
    small to change the rounding)."""
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    wide = np.longdouble
    with np.errstate(invalid="ignore", over="ignore"):
        for p in range(a.shape[1]):
            acc = (a[:, p, None].astype(wide) * b[p].astype(wide) + acc).astype(np.float32)
    return acc


def write_back(acc, alpha, beta, c, bias, relu):
    """The kernel's write-back with alpha and beta powers of two (so that its FMA rounds as NumPy does)."""
    v = np.float32(alpha) * acc
    if beta:
        v = np.float32(beta) * c + v
    if bias is not None:
        v = v + bias
    return np.where(v < 0, np.float32(0), v) if relu else v


def same_bits(x, y):
    return np.array_equal(np.asarray(x, np.float32).view(np.uint32), np.asarray(y, np.float32).view(np.uint32))


LAYOUTS = ["row-major", "packed", "column-major", "strided"]


@pytest.mark.parametrize("kind", ["bf16", "f32"])
def test_every_tile_shape_bit_for_bit(kernel, kind):
    """bf16 against VDPBF16PS's model, f32 against a chain of FMAs; the f32 kernel's narrow (n <= 16)
    tiles get B panels 16 floats wide, as gemm.c packs them, and its whole-height tiles run once with the
    next tile's A to prefetch."""
    rng = np.random.default_rng(26)
    model = emulate_vdpbf16ps if kind == "bf16" else fma_chain
    epilogues = [dict(), dict(beta=1.0), dict(alpha=0.5, beta=0.25, bias=True, relu=True)]
    for m in range(1, MR + 1):
        for n in (1, 15, 16, 17, 31, 32):
            for k in (1, 2, 15, 16, 17, 33, 100):
                a = rng.standard_normal((m, k)).astype(np.float32)
                b = rng.standard_normal((k, n)).astype(np.float32)
                acc = model(a, b)
                for turn, (layout, e) in enumerate(zip(LAYOUTS * 3, epilogues * 4)):
                    c = rng.standard_normal((m, n)).astype(np.float32)
                    bias = rng.standard_normal(n).astype(np.float32) if e.get("bias") else None
                    row = 16 if kind == "f32" and n <= 16 and turn % 2 else NR + turn % 3 * 8
                    tile, before, after = run(kernel, a, b, layout, kind=kind, alpha=e.get("alpha", 1.0),
                                              beta=e.get("beta", 0.0), c=c, bias=bias, relu=e.get("relu", False),
                                              row_words=row, a_next=kind == "f32" and turn % 3 == 1)
                    expected = write_back(acc, e.get("alpha", 1.0), e.get("beta", 0.0), c, bias, e.get("relu", False))
                    where = f"{kind} {layout} m={m} n={n} k={k} {e} B rows {row} floats apart"
                    assert same_bits(tile, expected), where
                    outside = np.ones(before.shape, bool)
                    outside[:m, :n] = False
                    assert same_bits(after[outside], before[outside]), f"wrote outside its tile: {where}"


def test_pair_rows_further_apart_than_the_tile(kernel):
    """gemm.c may hand the kernel B panels whose pair rows are more than NR words apart."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((MR, 40)).astype(np.float32)
    b = rng.standard_normal((40, NR)).astype(np.float32)
    tile, _, _ = run(kernel, a, b, "packed", row_words=NR + 16)
    assert same_bits(tile, emulate_vdpbf16ps(a, b))


@pytest.mark.parametrize("kind", ["bf16", "f32"])
@pytest.mark.parametrize("layout", ["row-major", "packed", "strided"])
def test_special_values(kernel, kind, layout):
    """Inf, NaN, the largest floats (which round up to Inf in bf16), subnormals (bf16: read as zeros) and
    products whose sums fall below the normal range (bf16: flushed to a zero of their sign)."""
    rng = np.random.default_rng(2)
    specials = np.array([np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-40, -1e-40, 1e-20, -1e-20, 0.0, -0.0],
                        dtype=np.float32)
    for trial in range(20):
        m, n, k = int(rng.integers(1, MR + 1)), int(rng.integers(1, NR + 1)), int(rng.integers(1, 40))
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a.flat[rng.integers(0, a.size, 3)] = rng.choice(specials, 3)
        b.flat[rng.integers(0, b.size, 3)] = rng.choice(specials, 3)
        if trial % 2:  # tiny values only: every sum below the normal range
            a, b = (a * np.float32(1e-20)).astype(np.float32), (b * np.float32(1e-20)).astype(np.float32)
        tile, _, _ = run(kernel, a, b, layout, kind=kind)
        expected = (emulate_vdpbf16ps if kind == "bf16" else fma_chain)(a, b)
        assert np.array_equal(np.isnan(tile), np.isnan(expected)), trial
        assert same_bits(np.where(np.isnan(tile), 0, tile), np.where(np.isnan(expected), 0, expected)), trial


def test_relu_keeps_nan_and_negative_zero(kernel):
    """The write-back's max(0, v) keeps a NaN (as np.maximum) and a -0 (MAXPS returns its second operand,
    v, on equal inputs; the portable kernel's `v < 0` test keeps it too). The -0 comes from a negative sum
    below the normal range, flushed."""
    a = np.array([[np.nan, 1.0], [-1.0, 0.0], [-1e-20, 0.0]], dtype=np.float32)
    b = np.array([[1e-20], [1.0]], dtype=np.float32)
    tile, _, _ = run(kernel, a, b, "packed", relu=True)
    expected = write_back(emulate_vdpbf16ps(a, b), 1.0, 0.0, None, None, True)
    assert np.isnan(tile[0, 0]) and np.isnan(expected[0, 0])
    assert same_bits(tile[1:], expected[1:]) and np.signbit(tile[2, 0]) and tile[2, 0] == 0
