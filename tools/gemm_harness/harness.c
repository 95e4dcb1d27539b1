/* The C harness of BENCHMARKS.md's build comparisons: the best GFLOPS of fc_gemm_run on one shape,
 * with no Python in the loop and the operands at chosen offsets from a cache line (NumPy's arrays
 * start 16 or 32 bytes into one), so that two builds can be alternated many times.
 *
 *   harness SHAPE [THREADS]     SHAPE is N (square) or MxKxN, with /ta or /tb for a transposed A or B
 *
 * Environment: AOFF, BOFF, COFF (offsets in floats, default 0), HUGE=1 (2 MiB pages, as NumPy gives
 * arrays of 4 MiB and more), PREPACK=1 (B packed once beforehand by fc_gemm_pack_b: the cost of
 * packing B, by difference), BETA=1 (C is read and added to, as a GEMM's later K blocks do), ROUNDS
 * (default 9), FASTCONV_ISA (a lower instruction set), FIT=L2/L1/L1_WAYS/L2_WAYS (the GEMM blocking
 * dispatch.c fits to those caches, in bytes and ways, rather than this CPU's). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "gemm/gemm.h"
#include "dispatch.h"
#include "fastconv.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int env_int(const char *name, int fallback)
{
    const char *v = getenv(name);
    return v ? atoi(v) : fallback;
}

/* floats + offset floats, on 2 MiB pages when `huge`, else 64-byte aligned; exits when out of memory. */
static float *operand(size_t floats, int offset, int huge)
{
    const size_t align = huge ? (size_t)2 << 20 : 64;
    const size_t bytes = ((floats + (size_t)offset) * sizeof(float) + align - 1) / align * align;
    float *p = aligned_alloc(align, bytes);
    if (!p) {
        fprintf(stderr, "harness: out of memory\n");
        exit(1);
    }
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return p + offset;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: harness SHAPE [THREADS]  (SHAPE: N or MxKxN, optionally /ta or /tb)\n");
        return 2;
    }
    long m, k, n;
    const int trans_a = strstr(argv[1], "/ta") != NULL, trans_b = strstr(argv[1], "/tb") != NULL;
    if (sscanf(argv[1], "%ldx%ldx%ld", &m, &k, &n) != 3) m = k = n = atol(argv[1]);
    const int threads = argc > 2 ? atoi(argv[2]) : 1, huge = env_int("HUGE", 0);
    if (m <= 0 || k <= 0 || n <= 0 || threads <= 0) {
        fprintf(stderr, "harness: bad shape or thread count\n");
        return 2;
    }
    float *a = operand((size_t)m * k, env_int("AOFF", 0), huge);
    float *b = operand((size_t)k * n, env_int("BOFF", 0), huge);
    float *c = operand((size_t)m * n, env_int("COFF", 0), huge);
    for (long i = 0; i < m * k; i++) a[i] = 1e-3f * (float)(i % 7);
    for (long i = 0; i < k * n; i++) b[i] = 1e-3f * (float)(i % 5);
    const char *fit = getenv("FIT");
    if (fit) {  /* the blocking of another CPU's caches: "L2/L1/L1_WAYS/L2_WAYS" in bytes and ways */
        long l2, l1, l1_ways, l2_ways;
        if (sscanf(fit, "%ld/%ld/%ld/%ld", &l2, &l1, &l1_ways, &l2_ways) != 4) {
            fprintf(stderr, "harness: FIT is L2/L1/L1_WAYS/L2_WAYS\n");
            return 2;
        }
        fc_fit_gemm_blocking(l2, l1, l1_ways, l2_ways);
    }
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    fc_gemm_problem p = {
        .m = m, .n = n, .k = k,
        .a = a, .a_rs = trans_a ? 1 : k, .a_cs = trans_a ? m : 1,
        .b = b, .b_rs = trans_b ? 1 : n, .b_cs = trans_b ? k : 1,
        .c = c, .ldc = n, .alpha = 1.0f, .beta = (float)env_int("BETA", 0),
    };
    if (env_int("PREPACK", 0)) {
        const int64_t floats = fc_gemm_packed_b_floats(kernel, &p);
        if (floats == 0) {
            fprintf(stderr, "harness: N is too wide for one packed B\n");
            return 2;
        }
        float *packed = operand((size_t)floats, 0, huge);
        fc_gemm_pack_b(kernel, &p, packed);
        p.b_packed = packed;
    }
    const double flops = 2.0 * (double)m * (double)n * (double)k;
    const int reps = (int)(1e9 / flops) + 1;  /* about a GFLOP a round */
    double best = 1e30;
    for (int r = 0; r < env_int("ROUNDS", 9); r++) {
        const double t0 = now();
        for (int i = 0; i < reps; i++) fc_gemm_run(kernel, &p, threads);
        const double t = (now() - t0) / reps;
        if (t < best) best = t;
    }
    printf("%s %dT %.1f\n", argv[1], threads, flops / best / 1e9);
    return 0;
}
