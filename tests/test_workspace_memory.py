"""Scratch memory (issue 25, items 2 and 5): sized from what a call reads, never from a stride or a
dilation; a failed allocation is a MemoryError, never an abort; a stated bound per call; and the
cache of it bounded, released after a large call and on request (RSS from /proc/self/statm)."""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv import _C
from fastconv._args import conv_geometry

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MiB = 2**20
# tools/sanitize preloads ASan, whose quarantine keeps freed memory resident: RSS says nothing there.
rss_measurable = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", "") or
                                    not os.path.exists("/proc/self/statm"),
                                    reason="RSS is not meaningful under ASan (or without /proc)")


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def naive_conv2d(x, w, strides=1, padding="valid", dilation_rate=1):
    """Tap by tap in float64 over the output pixels only: any stride, dilation or padding."""
    g = conv_geometry(x.shape, w.shape, strides, padding, dilation_rate)
    y = np.zeros(g.out_shape)
    for oy in range(g.oh):
        for ox in range(g.ow):
            for i in range(g.kh):
                for j in range(g.kw):
                    iy, ix = oy * g.stride_h - g.pad_top + i * g.dilation_h, ox * g.stride_w - g.pad_left + j * g.dilation_w
                    if 0 <= iy < g.h and 0 <= ix < g.w:
                        y[:, oy, ox, :] += x[:, iy, ix, :].astype(np.float64) @ w[i, j].astype(np.float64)
    return y


# The geometries: a stride of 2**31 - 1 (51 GB of band, SIGABRT), 2**26 (1.5 GB, 9 s for a 3x3
# image), and a dilation of 2**26 across a padded row; plus a huge stride with a huge dilation.
HUGE = [
    ((1, 3, 3, 2), (1, 1, 2, 4), dict(strides=2**31 - 1)),
    ((2, 3, 3, 2), (3, 3, 2, 4), dict(strides=2**26, padding="same")),
    ((1, 2, 3, 1), (2, 2, 1, 4), dict(dilation_rate=(1, 2**26), padding=((0, 0), (2**25, 2**25)))),
    ((1, 3, 3, 2), (2, 2, 2, 4), dict(strides=2**31 - 1, dilation_rate=2**22, padding=2**22)),
    ((2, 3, 3, 6), (2, 1, 6, 4), dict(strides=2**26, dilation_rate=(2, 1), padding=2**20)),
]


def test_huge_strides_and_dilations_in_a_subprocess():
    """Before: SIGABRT (rc -6) or gigabytes; now right results from a few KiB of scratch. In a
    subprocess, so that an abort fails this test rather than the run."""
    script = textwrap.dedent(f"""
        import numpy as np, fastconv
        from fastconv import _C
        from test_workspace_memory import HUGE, naive_conv2d
        rng = np.random.default_rng(0)
        for x_shape, w_shape, kwargs in HUGE:
            x = rng.standard_normal(x_shape).astype(np.float32)
            w = rng.standard_normal(w_shape).astype(np.float32)
            for algorithm in ("auto", "direct", "im2col"):
                fastconv.release_workspace()
                _C.reset_workspace_peak()
                y = fastconv.conv2d(x, w, algorithm=algorithm, **kwargs)
                np.testing.assert_allclose(y, naive_conv2d(x, w, **kwargs), rtol=1e-5, atol=1e-5)
                dx, dw, db = fastconv.conv2d_backward(np.ones_like(y), x, w, algorithm=algorithm, **kwargs)
                peak = _C.workspace_stats()[1]
                assert peak < 64 << 10, (x_shape, w_shape, kwargs, algorithm, peak)
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("x_shape,w_shape,kwargs", HUGE)
@pytest.mark.parametrize("backward", [False, True])
def test_huge_geometries_report_kilobytes_of_workspace(x_shape, w_shape, kwargs, backward):
    for algorithm in ("auto", "direct", "im2col"):
        size = fastconv.conv2d_workspace_bytes(x_shape, w_shape, backward=backward, algorithm=algorithm, **kwargs)
        assert size < 64 << 10


def workspace_bound(g, threads):
    """The bound stated in fastconv.conv2d's docstring and RELIABILITY.md, in bytes: 18 times the
    kernel (packed copy and the 16 partial sums of dw), plus per thread 4 * kh * kw times the padded
    input, 4 times the output and 1 Mi floats. Strides and dilations enter only through these sizes."""
    x_pad = g.n * (g.h + g.pad_top + g.pad_bottom) * (g.w + g.pad_left + g.pad_right) * g.cin
    y = g.n * g.oh * g.ow * g.cout
    w = g.kh * g.kw * g.cin * g.cout
    return 4 * (18 * (w + g.cout) + threads * (4 * g.kh * g.kw * x_pad + 4 * y + 2**20))


def sizes(low, high):
    return st.integers(low, high) | st.sampled_from([low, high])


@settings(max_examples=int(os.environ.get("FASTCONV_PROPERTY_EXAMPLES", "50")) * 4, deadline=None, database=None)
@given(n=sizes(1, 300), h=sizes(1, 300), w=sizes(1, 300), cin=sizes(1, 300), cout=sizes(1, 300),
       kh=sizes(1, 12), kw=sizes(1, 12),
       strides=st.tuples(sizes(1, 4) | sizes(1, 2**31 - 1), sizes(1, 4) | sizes(1, 2**31 - 1)),
       dilation=st.tuples(sizes(1, 3) | sizes(1, 2**20), sizes(1, 3) | sizes(1, 2**20)),
       padding=st.sampled_from(["valid", "same"]) | sizes(0, 4) | sizes(0, 2**20),
       algorithm=st.sampled_from(["auto", "im2col", "direct", "implicit"]), backward=st.booleans())
def test_workspace_per_call_is_within_the_stated_bound(n, h, w, cin, cout, kh, kw, strides, dilation, padding,
                                                         algorithm, backward):
    try:
        g = conv_geometry((n, h, w, cin), (kh, kw, cin, cout), strides, padding, dilation)
    except ValueError:
        return
    size = fastconv.conv2d_workspace_bytes((n, h, w, cin), (kh, kw, cin, cout), strides=strides, padding=padding,
                                           dilation_rate=dilation, backward=backward, algorithm=algorithm)
    assert 0 <= size <= workspace_bound(g, fastconv.get_num_threads())


@settings(max_examples=int(os.environ.get("FASTCONV_PROPERTY_EXAMPLES", "50")), deadline=None, database=None)
@given(n=sizes(1, 4), h=sizes(1, 12), w=sizes(1, 12), cin=sizes(1, 9), cout=sizes(1, 40), kh=sizes(1, 4),
       kw=sizes(1, 4), strides=st.tuples(sizes(1, 3), sizes(1, 3)), dilation=st.tuples(sizes(1, 2), sizes(1, 2)),
       padding=st.sampled_from(["valid", "same"]) | sizes(0, 3),
       algorithm=st.sampled_from(["auto", "im2col", "direct", "implicit"]), backward=st.booleans())
def test_a_call_allocates_what_conv2d_workspace_bytes_says(n, h, w, cin, cout, kh, kw, strides, dilation, padding,
                                                             algorithm, backward):
    """Measured: the most scratch held during the call (after releasing the cache) is the reported size
    (or less, where the GEMM reads an operand in place that the size had to allow packing for), up to
    whole pages for the buffers of 256 KiB and more (their own mappings) and 16 floats at least."""
    kwargs = dict(strides=strides, padding=padding, dilation_rate=dilation, algorithm=algorithm)
    try:
        g = conv_geometry((n, h, w, cin), (kh, kw, cin, cout), strides, padding, dilation)
    except ValueError:
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    k = rng.standard_normal((kh, kw, cin, cout)).astype(np.float32)
    reported = fastconv.conv2d_workspace_bytes(x.shape, k.shape, backward=backward, **kwargs)
    fastconv.release_workspace()
    _C.reset_workspace_peak()
    if backward:
        fastconv.conv2d_backward(np.ones(g.out_shape, np.float32), x, k, **kwargs)
    else:
        fastconv.conv2d(x, k, **kwargs)
    assert _C.workspace_stats()[1] <= max(reported, 64) + 3 * PAGE  # 3 slots, each up to a page more


@pytest.fixture
def failing_scratch():
    """Every scratch request fails as if memory were short (a test hook of the C library)."""
    _C.fail_scratch_from(1)
    yield
    _C.fail_scratch_from(-1)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_every_allocation_failure_is_a_memory_error(failing_scratch):
    rng = np.random.default_rng(1)
    x1, x8 = f32(rng, 2, 12, 12, 1), f32(rng, 2, 12, 12, 8)
    w1, w8, w8x1 = f32(rng, 3, 3, 1, 8), f32(rng, 3, 3, 8, 16), f32(rng, 1, 1, 8, 16)
    calls = {
        "gemm": lambda: fastconv.gemm(f32(rng, 70, 40), f32(rng, 40, 50)),
        "gemm with bias": lambda: fastconv.gemm(f32(rng, 70, 40), f32(rng, 40, 50), bias=f32(rng, 50)),
        "conv2d direct": lambda: fastconv.conv2d(x1, w1),
        "conv2d im2col": lambda: fastconv.conv2d(x8, w8, strides=2),
        "conv2d implicit": lambda: fastconv.conv2d(x8, w8, padding="same"),
        "conv2d 1x1": lambda: fastconv.conv2d(x8, w8x1),
        "conv2d_backward direct": lambda: fastconv.conv2d_backward(np.ones((2, 10, 10, 8), np.float32), x1, w1),
        "conv2d_backward im2col": lambda: fastconv.conv2d_backward(np.ones((2, 5, 5, 16), np.float32), x8, w8,
                                                                   strides=2),
        "conv2d_backward implicit": lambda: fastconv.conv2d_backward(np.ones((2, 12, 12, 16), np.float32), x8, w8,
                                                                     padding="same"),
        "conv2d_transpose": lambda: fastconv.conv2d_transpose(f32(rng, 2, 5, 5, 16), w8, strides=2),
        "maxpool2d_backward": lambda: fastconv.maxpool2d_backward(np.ones((2, 5, 5, 8), np.float32), x8, 3, 2),
        "batch_norm": lambda: fastconv.batch_norm(x8),
        "batch_norm inference": lambda: fastconv.batch_norm(x8, mean=np.zeros(8), variance=np.ones(8)),
        "batch_norm_backward": lambda: fastconv.batch_norm_backward(x8, x8, np.zeros(8, np.float32),
                                                                    np.ones(8, np.float32)),
    }
    for name, call in calls.items():
        with pytest.raises(MemoryError, match="scratch"):
            call()
    assert fastconv.workspace_bytes() <= _C.workspace_stats()[2]
    _C.fail_scratch_from(-1)
    for call in calls.values():  # and everything works again
        call()


def test_an_address_space_limit_gives_memory_error_then_work_goes_on():
    """A real failure: under RLIMIT_AS, a backward pass whose scratch (98 MiB) does not fit raises
    MemoryError (before: SIGABRT from fc_scratch); with the limit lifted the same call works."""
    script = textwrap.dedent("""
        import resource
        import numpy as np, fastconv
        fastconv.set_num_threads(1)  # no OpenMP thread to create under the limit
        x = np.ones((1, 128, 128, 64), np.float32)
        w = np.ones((7, 7, 64, 1), np.float32)
        dy = np.ones((1, 64, 64, 1), np.float32)
        kwargs = dict(strides=2, padding="same")
        need = fastconv.conv2d_workspace_bytes(x.shape, w.shape, backward=True, **kwargs)
        assert need > 80 << 20, need
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (40 << 20), hard))
        try:
            fastconv.conv2d_backward(dy, x, w, **kwargs)
        except MemoryError as error:
            assert "scratch" in str(error), error
        else:
            raise AssertionError("no MemoryError")
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        dx, dw, db = fastconv.conv2d_backward(dy, x, w, **kwargs)
        assert db[0] == 64 * 64
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "ok"


def large_backward():
    """A backward pass whose im2col blocks take 98 MiB of scratch per thread for 4 MiB of input."""
    x = np.ones((1, 128, 128, 64), np.float32)
    w = np.full((7, 7, 64, 1), 0.01, np.float32)
    kwargs = dict(strides=2, padding="same", algorithm="im2col")
    return x, w, np.ones((1, 64, 64, 1), np.float32), kwargs


@rss_measurable
def test_a_large_call_gives_its_scratch_back_when_it_ends(threads):
    """One large backward pass kept 1.2 GiB in the main thread until exit before; now a call that ends
    with more than the cache limit held frees its thread's buffers."""
    threads(2)
    x, w, dy, kwargs = large_backward()
    need = fastconv.conv2d_workspace_bytes(x.shape, w.shape, backward=True, **kwargs)
    limit = _C.workspace_stats()[2]
    assert need > limit + 32 * MiB
    fastconv.release_workspace()
    gc.collect()
    baseline = rss_bytes()
    _C.reset_workspace_peak()
    grads = fastconv.conv2d_backward(dy, x, w, **kwargs)
    assert _C.workspace_stats()[1] >= need * 0.9  # it did use the scratch
    del grads
    gc.collect()
    assert fastconv.workspace_bytes() <= limit
    growth = rss_bytes() - baseline
    assert growth < 16 * MiB, f"RSS grew {growth / MiB:.1f} MiB after a call that used {need / MiB:.0f} MiB"


@rss_measurable
def test_many_shapes_stay_under_the_cache_limit_and_release_returns_to_baseline():
    """50 convolutions of varied shapes ratcheted RSS up 62 MiB without coming back before."""
    rng = np.random.default_rng(3)
    fastconv.release_workspace()
    gc.collect()
    baseline = rss_bytes()
    limit = _C.workspace_stats()[2]
    for i in range(50):
        n, size, cin, cout = int(rng.integers(1, 9)), int(rng.integers(8, 40)), int(rng.integers(1, 64)), \
            int(rng.integers(1, 64))
        kernel = int(rng.integers(1, 6))
        x = rng.standard_normal((n, size, size, cin)).astype(np.float32)
        w = rng.standard_normal((kernel, kernel, cin, cout)).astype(np.float32)
        strides = int(rng.integers(1, 3))
        y = fastconv.conv2d(x, w, strides=strides, padding="same")
        fastconv.conv2d_backward(np.ones_like(y), x, w, strides=strides, padding="same")
        assert fastconv.workspace_bytes() <= limit
    gc.collect()
    assert fastconv.workspace_bytes() <= limit
    assert fastconv.release_workspace() >= 0
    assert fastconv.workspace_bytes() == 0
    growth = rss_bytes() - baseline
    assert growth < 16 * MiB, f"RSS {growth / MiB:.1f} MiB above the baseline after release_workspace()"


def test_workspace_limit_is_settable_and_checked():
    previous = _C.workspace_stats()[2]
    try:
        fastconv.set_workspace_limit(0)  # every call frees its scratch when it ends
        fastconv.conv2d(np.ones((2, 12, 12, 8), np.float32), np.ones((3, 3, 8, 16), np.float32), strides=2)
        assert fastconv.workspace_bytes() == 0
        for bad in (-1, 1.5, "1", True, None):
            with pytest.raises(ValueError, match="nbytes"):
                fastconv.set_workspace_limit(bad)
    finally:
        fastconv.set_workspace_limit(previous)
