/* The direct path's loops (few input channels): the weights packed once per call into blocks of output
 * channels, output rows split over the threads. The kernels they call are direct.c's, compiled once per
 * instruction set (direct.h); the weight and input gradients run in im2col.c's backward loop. */
#include <string.h>

#include "plan.h"

/* Floats of the direct kernels' packed weights (plus bias) and of one packed dw (plus db). */
int64_t conv_direct_packed_floats(const fc_conv_shape *s, int block)
{
    const int64_t cblocks = (s->cout + block - 1) / block;
    return cblocks * block * (patch_size(s) + 1);
}

/* Packs w (kh, kw, cin, cout) and bias into the direct kernels' layout (direct.h) at wp. */
void conv_direct_pack(const fc_conv_shape *s, int64_t block, const float *w, const float *bias, float *wp)
{
    const int64_t cblocks = (s->cout + block - 1) / block, taps_cin = patch_size(s);
    float *bp = wp + cblocks * taps_cin * block;
    for (int64_t cb = 0; cb < cblocks; cb++) {
        const int64_t co = cb * block, n = min64(block, s->cout - co);
        for (int64_t t = 0; t < taps_cin; t++) {
            float *dst = wp + (cb * taps_cin + t) * block;
            memcpy(dst, w + t * s->cout + co, sizeof(float) * (size_t)n);
            memset(dst + n, 0, sizeof(float) * (size_t)(block - n));
        }
        for (int64_t c = 0; c < block; c++) bp[co + c] = bias && c < n ? bias[co + c] : 0.0f;
    }
}

int conv_direct_forward(const conv_plan *p, const float *x, const float *w, const float *bias, int relu, float *y)
{
    const fc_conv_shape *s = &p->s;
    const fc_conv_direct_kernels *dk = p->direct;
    const forward_layout l = p->fwd;
    float *wp = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!wp) return FC_ERROR_NO_MEMORY;
    const int64_t cblocks = (s->cout + dk->block - 1) / dk->block;
    const float *bp = wp + cblocks * patch_size(s) * dk->block;
    conv_direct_pack(s, dk->block, w, bias, wp);
    const int64_t rows = s->n * s->oh;
    const int threads = l.threads;
    /* About 4096 output pixels per task: small enough to balance, large enough to amortise. */
    const int64_t chunk = max64(1, 4096 / s->ow), chunks = (rows + chunk - 1) / chunk;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *band = wp + l.shared + fc_thread_num() * l.per_thread;
        #pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < chunks; t++)
            dk->forward(s, x, wp, bp, relu, y, t * chunk, min64(chunk, rows - t * chunk), band);
    }
    return FC_OK;
}
