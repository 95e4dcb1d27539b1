/* Max pooling 2x2, stride 2 (see maxpool2x2.h). One source, compiled once per instruction set: the
 * channels of a window go through vectors of 16 floats with -mavx512f, 8 with -mavx2, 4 otherwise
 * (GCC/Clang vector extensions: the compiler does not vectorise the scalar selects itself, as float
 * compares may trap). Channel counts that are not a multiple of the width end with one vector that
 * overlaps the one before: every output is a pure function of its window, so writing it twice is
 * harmless. Fewer channels than one vector take the scalar loop. */
#include <string.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "maxpool2x2.h"

#if defined(__AVX512F__)
#define MAXPOOL2X2_TABLE fc_maxpool2x2_avx512
#define MAXPOOL2X2_NAME "maxpool2x2_avx512"
#define LANES 16
#elif defined(__AVX2__) && defined(__FMA__)
#define MAXPOOL2X2_TABLE fc_maxpool2x2_avx2
#define MAXPOOL2X2_NAME "maxpool2x2_avx2"
#define LANES 8
#else
#define MAXPOOL2X2_TABLE fc_maxpool2x2_generic
#define MAXPOOL2X2_NAME "maxpool2x2_generic"
#define LANES 4
#endif

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef uint8_t vb __attribute__((vector_size(LANES)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vi beats(vf v, vf best) { return (v > best) | ((v != v) & (best == best)); }
static inline vf select_lanes(vi take, vf v, vf other) { return (vf)((take & (vi)v) | (~take & (vi)other)); }

/* LANES argmax bytes to and from the lanes of a vi (values 0..255; packs saturate, which keeps them). */
#if LANES == 4 && defined(__SSE2__)
static inline vi load_bytes(const uint8_t *p)
{
    int32_t bytes;
    memcpy(&bytes, p, sizeof bytes);
    const __m128i zero = _mm_setzero_si128();
    return (vi)_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
}
static inline void store_bytes(uint8_t *p, vi v)
{
    const __m128i words = _mm_packs_epi32((__m128i)v, (__m128i)v);
    const int32_t bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
    memcpy(p, &bytes, sizeof bytes);
}
#elif LANES == 8
/* AVX2: one zero-extension and two packs (the vector-extension fallback below compiles to eight
 * scalar byte moves each way here). */
static inline vi load_bytes(const uint8_t *p) { return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline void store_bytes(uint8_t *p, vi v)
{
    const __m256i lanes = (__m256i)v;
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(words, words));
}
#else
static inline vi load_bytes(const uint8_t *p)
{
    vb v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vi);
}
static inline void store_bytes(uint8_t *p, vi v)
{
    const vb b = __builtin_convertvector(v, vb);
    memcpy(p, &b, sizeof b);
}
#endif

/* LANES channels of four 2x2 windows a b / c d: the first maximum (row-major; the first NaN wins) and,
 * per tap, whether it beat the running maximum (the last tap that did holds the maximum). */
typedef struct { vf best; vi ta, tb, tc, td; } first_max;

static inline first_max find_first_max(const float *a, const float *b, const float *c, const float *d)
{
    first_max r;
    const vf none = (vf){0} - __builtin_inff();
    const vf va = load(a), vb_ = load(b), vc = load(c), vd = load(d);
    r.ta = beats(va, none);
    r.best = select_lanes(r.ta, va, none);  /* == va, also when va is -inf */
    r.tb = beats(vb_, r.best);
    r.best = select_lanes(r.tb, vb_, r.best);
    r.tc = beats(vc, r.best);
    r.best = select_lanes(r.tc, vc, r.best);
    r.td = beats(vd, r.best);
    r.best = select_lanes(r.td, vd, r.best);
    return r;
}

/* One channel: the tap (0..3) of the first maximum of a b / c d, or FC_ARGMAX_NONE when all are -inf. */
static inline int first_max_tap(float a, float b, float c, float d, float *best)
{
    int tap = FC_ARGMAX_NONE;
    *best = -__builtin_inff();
    if (fc_pool_beats(a, *best)) { *best = a; tap = 0; }
    if (fc_pool_beats(b, *best)) { *best = b; tap = 1; }
    if (fc_pool_beats(c, *best)) { *best = c; tap = 2; }
    if (fc_pool_beats(d, *best)) { *best = d; tap = 3; }
    return tap;
}

/* The channel offset of vector `ch` of n channels: the last one is moved back to end at n. */
static inline int64_t vector_at(int64_t ch, int64_t n) { return ch + LANES <= n ? ch : n - LANES; }

/* out = the first maximum of windows a b / c d over n channels, and its argmax bytes when arg is not NULL. */
static void max_2x2(int64_t n, const float *a, const float *b, const float *c, const float *d, float *out,
                    uint8_t *arg)
{
    if (n >= LANES) {
        for (int64_t ch = 0; ch < n; ch += LANES) {
            const int64_t at = vector_at(ch, n);
            const first_max w = find_first_max(a + at, b + at, c + at, d + at);
            store(out + at, w.best);
            if (arg) {
                /* the last tap that beat the running maximum; none for a window of nothing but -inf */
                const vi tap = (w.td & 3) |
                               (~w.td & ((w.tc & 2) | (~w.tc & ((w.tb & 1) | (~w.tb & ~w.ta & FC_ARGMAX_NONE)))));
                store_bytes(arg + at, tap | (~(w.best > (vf){0}) & FC_ARGMAX_NOT_POSITIVE));
            }
        }
        return;
    }
    for (int64_t ch = 0; ch < n; ch++) {
        float best;
        const int tap = first_max_tap(a[ch], b[ch], c[ch], d[ch], &best);
        out[ch] = best;
        if (arg) arg[ch] = fc_argmax_byte(tap, best);
    }
}

/* dy (g) to each window's first maximum, zero to the other three; a window of nothing but -inf
 * passes no gradient, as in the general path. With x_from_relu, neither does a window whose maximum
 * is not > 0 (the ReLU that produced x passes no gradient there). */
static void max_2x2_backward(int64_t n, const float *a, const float *b, const float *c, const float *d,
                             const float *g, int x_from_relu, float *da, float *db, float *dc, float *dd)
{
    if (n >= LANES) {
        for (int64_t ch = 0; ch < n; ch += LANES) {
            const int64_t at = vector_at(ch, n);
            const first_max w = find_first_max(a + at, b + at, c + at, d + at);
            const vi gv = (vi)load(g + at) & (x_from_relu ? (w.best > (vf){0}) : ~(vi){0});
            store(dd + at, (vf)(gv & w.td));
            store(dc + at, (vf)(gv & w.tc & ~w.td));
            store(db + at, (vf)(gv & w.tb & ~w.tc & ~w.td));
            store(da + at, (vf)(gv & w.ta & ~w.tb & ~w.tc & ~w.td));
        }
        return;
    }
    for (int64_t ch = 0; ch < n; ch++) {
        float best;
        int which = first_max_tap(a[ch], b[ch], c[ch], d[ch], &best);
        if (x_from_relu && !(best > 0.0f)) which = -1;
        da[ch] = which == 0 ? g[ch] : 0.0f;
        db[ch] = which == 1 ? g[ch] : 0.0f;
        dc[ch] = which == 2 ? g[ch] : 0.0f;
        dd[ch] = which == 3 ? g[ch] : 0.0f;
    }
}

/* The same from the argmax bytes the forward pass recorded: dy to the recorded tap, zero elsewhere. */
static void max_2x2_backward_argmax(int64_t n, const uint8_t *arg, const float *g, int x_from_relu, float *da,
                                    float *db, float *dc, float *dd)
{
    const uint8_t skip = x_from_relu ? FC_ARGMAX_NOT_POSITIVE : 0;
    if (n >= LANES) {
        for (int64_t ch = 0; ch < n; ch += LANES) {
            const int64_t at = vector_at(ch, n);
            const vi t = load_bytes(arg + at), tap = t & FC_ARGMAX_NONE;
            const vi v = (vi)load(g + at) & ((t & skip) == 0);
            store(da + at, (vf)(v & (tap == 0)));
            store(db + at, (vf)(v & (tap == 1)));
            store(dc + at, (vf)(v & (tap == 2)));
            store(dd + at, (vf)(v & (tap == 3)));
        }
        return;
    }
    for (int64_t ch = 0; ch < n; ch++) {
        const uint8_t t = arg[ch];
        const float v = (t & skip) ? 0.0f : g[ch];
        const uint8_t tap = t & FC_ARGMAX_NONE;
        da[ch] = tap == 0 ? v : 0.0f;
        db[ch] = tap == 1 ? v : 0.0f;
        dc[ch] = tap == 2 ? v : 0.0f;
        dd[ch] = tap == 3 ? v : 0.0f;
    }
}

static void forward_row(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const float *top = x + (img * s->h + 2 * oy) * ld, *bottom = top + ld;
    float *out = y + row * s->ow * s->c;
    uint8_t *arg = argmax ? argmax + row * s->ow * s->c : NULL;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        max_2x2(s->c, top + at, top + at + s->c, bottom + at, bottom + at + s->c, out + ox * s->c,
                arg ? arg + ox * s->c : NULL);
    }
}

static void backward_row(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                         int x_from_relu, float *dx, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const int64_t offset = (img * s->h + 2 * oy) * ld;
    const float *g = dy + row * s->ow * s->c;
    float *dtop = dx + offset, *dbottom = dtop + ld;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        if (argmax) {
            max_2x2_backward_argmax(s->c, argmax + (row * s->ow + ox) * s->c, g + ox * s->c, x_from_relu, dtop + at,
                                    dtop + at + s->c, dbottom + at, dbottom + at + s->c);
        } else {
            const float *top = x + offset + at, *bottom = top + ld;
            max_2x2_backward(s->c, top, top + s->c, bottom, bottom + s->c, g + ox * s->c, x_from_relu, dtop + at,
                             dtop + at + s->c, dbottom + at, dbottom + at + s->c);
        }
    }
    if (s->w > 2 * s->ow) {  /* an odd last column belongs to no window */
        memset(dtop + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
        memset(dbottom + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
    }
    if (oy == s->oh - 1 && s->h > 2 * s->oh)  /* so do the last rows */
        memset(dbottom + ld, 0, sizeof(float) * (size_t)((s->h - 2 * s->oh - 1) * ld + ld));
}

const fc_maxpool2x2_kernels MAXPOOL2X2_TABLE = {
    .name = MAXPOOL2X2_NAME,
    .forward_row = forward_row,
    .backward_row = backward_row,
};
