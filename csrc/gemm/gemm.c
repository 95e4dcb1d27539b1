/* The loops around the micro-kernel, written once for every instruction set (BLIS/Goto design):
 *   jc over n by NC  -> pc over k by KC (pack B block) -> ic over m by MC (pack A block)
 *   -> jr over NR columns -> ir over MR rows -> micro-kernel.
 * Threads split the (ic, jr-group) tiles of C; K is never split, so every element of C is summed in
 * the same order whatever the thread count. */
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "../fastconv.h"
#include "../dispatch.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Packs rows [i0, i0+m) x cols [p0, p0+k) of op(A) into MR-row panels, zero-filling the last one. */
static void pack_a(const fc_gemm_problem *p, int mr, int64_t i0, int64_t m, int64_t p0, int64_t k, float *dst)
{
    for (int64_t ir = 0; ir < m; ir += mr) {
        const int rows = (int)min64(mr, m - ir);
        for (int64_t q = 0; q < k; q++) {
            const float *src = p->a + (i0 + ir) * p->a_rs + (p0 + q) * p->a_cs;
            for (int i = 0; i < rows; i++) dst[i] = src[i * p->a_rs];
            for (int i = rows; i < mr; i++) dst[i] = 0.0f;
            dst += mr;
        }
    }
}

/* Packs one NR-column panel: rows [p0, p0+k) x cols [j0, j0+cols) of op(B), zero-filled to NR. */
static void pack_b_panel(const fc_gemm_problem *p, int nr, int64_t p0, int64_t k, int64_t j0, int cols, float *dst)
{
    for (int64_t q = 0; q < k; q++) {
        const float *src = p->b + (p0 + q) * p->b_rs + j0 * p->b_cs;
        if (p->b_cs == 1 && cols == nr) {
            memcpy(dst, src, sizeof(float) * nr);
        } else {
            for (int j = 0; j < cols; j++) dst[j] = src[j * p->b_cs];
            for (int j = cols; j < nr; j++) dst[j] = 0.0f;
        }
        dst += nr;
    }
}

static float *alloc_floats(int64_t count)
{
    /* 64-byte alignment keeps packed panels on cache-line boundaries. */
    size_t bytes = ((size_t)count * sizeof(float) + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* Scales C by beta (and adds bias/relu) when k == 0: nothing to multiply, only the epilogue. */
static void epilogue_only(const fc_gemm_problem *p)
{
    fc_tile_epilogue ep = { p->alpha, p->beta, NULL, p->relu };
    for (int64_t i = 0; i < p->m; i++) {
        float zero_row_acc = 0.0f;
        for (int64_t j = 0; j < p->n; j++) {
            ep.bias = p->bias ? p->bias + j : NULL;
            fc_store_tile(&zero_row_acc, 0, p->c + i * p->ldc + j, p->ldc, 1, 1, &ep);
        }
    }
}

void fc_gemm_run(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int threads)
{
    if (p->m <= 0 || p->n <= 0) return;
    if (p->k <= 0) { epilogue_only(p); return; }
    const int64_t mr = kr->mr, nr = kr->nr;
    const int64_t kc_max = min64(kr->kc, p->k);
    const int64_t nc_max = min64(kr->nc, (p->n + nr - 1) / nr * nr);
    const int64_t mc_max = min64(kr->mc, (p->m + mr - 1) / mr * mr);
    float *b_pack = alloc_floats(kc_max * nc_max);
    if (!b_pack) abort();

    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *a_pack = alloc_floats(mc_max * kc_max);
        if (!a_pack) abort();
        for (int64_t jc = 0; jc < p->n; jc += nc_max) {
            const int64_t nc = min64(nc_max, p->n - jc);
            const int64_t n_panels = (nc + nr - 1) / nr;
            for (int64_t pc = 0; pc < p->k; pc += kc_max) {
                const int64_t kc = min64(kc_max, p->k - pc);
                const int last_k_block = pc + kc == p->k;
                fc_tile_epilogue ep = {
                    .alpha = p->alpha, .beta = pc == 0 ? p->beta : 1.0f,
                    .bias = NULL, .relu = last_k_block && p->relu,
                };
                #pragma omp for schedule(static)
                for (int64_t jp = 0; jp < n_panels; jp++)
                    pack_b_panel(p, (int)nr, pc, kc, jc + jp * nr, (int)min64(nr, nc - jp * nr), b_pack + jp * nr * kc);

                /* Tiles of C: each MC block of rows, cut into column groups when there are fewer
                 * row blocks than threads (small m, e.g. a Dense layer's batch). */
                const int64_t m_blocks = (p->m + mc_max - 1) / mc_max;
                int64_t groups = m_blocks >= threads ? 1 : (threads + m_blocks - 1) / m_blocks;
                if (groups > n_panels) groups = n_panels;
                const int64_t panels_per_group = (n_panels + groups - 1) / groups;
                groups = (n_panels + panels_per_group - 1) / panels_per_group;
                int64_t packed_block = -1;
                #pragma omp for schedule(static)
                for (int64_t t = 0; t < m_blocks * groups; t++) {
                    const int64_t ib = t / groups, g = t % groups;
                    const int64_t ic = ib * mc_max, mc = min64(mc_max, p->m - ic);
                    if (packed_block != ib) {
                        pack_a(p, (int)mr, ic, mc, pc, kc, a_pack);
                        packed_block = ib;
                    }
                    const int64_t jp_end = min64(n_panels, (g + 1) * panels_per_group);
                    for (int64_t jp = g * panels_per_group; jp < jp_end; jp++) {
                        const int64_t j = jc + jp * nr;
                        const int cols = (int)min64(nr, p->n - j);
                        ep.bias = last_k_block && p->bias ? p->bias + j : NULL;
                        for (int64_t ir = 0; ir < mc; ir += mr) {
                            kr->ukr(kc, a_pack + ir * kc, b_pack + jp * nr * kc, p->c + (ic + ir) * p->ldc + j,
                                    p->ldc, (int)min64(mr, mc - ir), cols, &ep);
                        }
                    }
                }
            }
        }
        free(a_pack);
    }
    free(b_pack);
}

void fc_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
             float *c, int64_t ldc, const float *bias, int relu)
{
    const fc_gemm_problem p = {
        .m = m, .n = n, .k = k,
        .a = a, .a_rs = trans_a ? 1 : lda, .a_cs = trans_a ? lda : 1,
        .b = b, .b_rs = trans_b ? 1 : ldb, .b_cs = trans_b ? ldb : 1,
        .c = c, .ldc = ldc, .alpha = alpha, .beta = beta, .bias = bias, .relu = relu,
    };
    fc_gemm_run(fc_active_gemm_kernel(), &p, fc_threads_for_work((double)m * n * k));
}
