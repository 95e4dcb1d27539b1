"""The kernel workload that tools/valgrind_kernels runs under valgrind: every op, every algorithm and
(valgrind permitting) every ISA path, on small shapes with partial tiles, padding, strides, dilation."""
import numpy as np

import fastconv

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def workload():
    for m, k, n in ((1, 1, 1), (7, 13, 5), (17, 70, 33), (40, 400, 50)):
        for ta in (False, True):
            for tb in (False, True):
                a = f32(k, m) if ta else f32(m, k)
                b = f32(n, k) if tb else f32(k, n)
                out = f32(m, n)
                fastconv.gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=1.5, out=out, bias=f32(n),
                              activation="relu")
    cases = [
        ((2, 9, 11, 1), (3, 3, 1, 5), dict(padding="same")),
        ((1, 7, 7, 3), (7, 7, 3, 17), dict(padding="valid")),                     # kernel = input
        ((2, 10, 8, 4), (2, 5, 4, 33), dict(strides=(2, 3), padding=((1, 2), (0, 1)))),
        ((1, 12, 12, 2), (3, 2, 2, 8), dict(dilation_rate=(2, 3), padding="same")),
        ((3, 6, 6, 9), (3, 3, 9, 20), dict(strides=2, padding="same")),
        ((2, 5, 5, 16), (1, 1, 16, 7), dict()),                                     # pointwise: one gemm
        ((1, 1, 1, 1), (1, 1, 1, 1), dict()),
    ]
    for x_shape, w_shape, kwargs in cases:
        x, w = f32(*x_shape), f32(*w_shape)
        for algorithm in ("auto", "im2col", "direct"):
            y = fastconv.conv2d(x, w, f32(w_shape[3]), activation="relu", algorithm=algorithm, **kwargs)
            fastconv.conv2d_backward(f32(*y.shape), x, w, algorithm=algorithm, **kwargs)
            fastconv.conv2d_backward(f32(*y.shape), x, w, algorithm=algorithm, need_dx=False, **kwargs)
    for x_shape, pool, strides, padding in (((2, 8, 8, 16), 2, None, "valid"), ((1, 9, 7, 3), 3, 2, "same"),
                                            ((2, 5, 6, 17), (2, 3), 1, "same"), ((1, 1, 1, 1), 1, None, "valid")):
        x = f32(*x_shape)
        y = fastconv.maxpool2d(x, pool, strides, padding)
        fastconv.maxpool2d_backward(f32(*y.shape), x, pool, strides, padding)
        y = fastconv.avgpool2d(x, pool, strides, padding)
        fastconv.avgpool2d_backward(f32(*y.shape), x, pool, strides, padding)


if __name__ == "__main__":
    isas = fastconv.available_isas()
    print("valgrind workload on", isas, "with", fastconv.get_num_threads(), "threads", flush=True)
    for isa in isas:
        fastconv.set_isa(isa)
        workload()
    fastconv.set_num_threads(1)
    workload()
    print("workload done", flush=True)
