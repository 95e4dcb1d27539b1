/* The GEMM micro-kernel contract, shared by every instruction set (the BLIS design).
 *
 * A micro-kernel multiplies an MR x k panel of A (k >= 1) by a packed k x NR panel of B and writes the
 * m x n corner (m <= MR, n <= NR) of the tile at c (row stride ldc):
 *     c = alpha * (A_panel @ B_panel) + beta * c      (c is not read when beta == 0)
 *     then c += bias[0..n) per column and c = max(c, 0) when asked, while the tile is in registers.
 * A panel element (i, p) is a[i * rs_a + p * cs_a] for all MR rows (rows past m must be readable;
 * the kernel ignores them). A tile of m < MR rows costs m rounded up to even rows, not MR: every
 * kernel runs only those rows (conv tiling relies on it). Packed panels are k groups of MR floats
 * (rs_a = 1, cs_a = MR), and a row-major A can be passed in place (rs_a = lda, cs_a = 1). Row p of the B panel is the NR floats at
 * b_panel + p * rs_b: packed panels have rs_b = NR, and a row-major B can be passed in place (rs_b =
 * ldb) where all NR of its columns exist. a_next is NULL, or (for a row-major A, cs_a = 1) the next
 * tile's MR rows, rs_a apart, which a full tile fetches into L2 a line per k step while it runs
 * (partial tiles ignore it): the caller passes them where A is first read from memory. */
#ifndef FASTCONV_GEMM_H
#define FASTCONV_GEMM_H

#include <stdint.h>

typedef struct {
    float alpha, beta;
    const float *bias;   /* NULL, or the bias of this tile's first column */
    int relu;
} fc_tile_epilogue;

/* The plain product's write-back (every K block of a plain GEMM): C is stored, or added to, as is. The
 * micro-kernels write such tiles straight from their accumulators. */
static inline int fc_epilogue_is_plain(const fc_tile_epilogue *ep)
{
    return ep->alpha == 1.0f && (ep->beta == 0.0f || ep->beta == 1.0f) && !ep->bias && !ep->relu;
}

typedef void (*fc_gemm_ukr)(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                            const float *b_panel, int64_t rs_b, float *c, int64_t ldc, int m, int n,
                            const fc_tile_epilogue *ep);

/* Packs rows [first, rows) x k of an operand, element (i, q) at src[i * rs + q * cs], into panels of
 * `width` rows: element (i, q) goes to dst[(i / width) * panel_stride + q * width + i % width], and the
 * last panel's rows past `rows` are zero; `first` is a multiple of width. A panels have width MR, B
 * panels fc_gemm_b_panel_width (NR, or narrower for a narrow B). One per instruction set (pack.c), as
 * the micro-kernels. */
typedef void (*fc_gemm_pack_fn)(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k,
                                int width, int64_t panel_stride, float *dst);

/* One micro-kernel's fixed description, written in its file (ukr_<isa>_<MR>x<NR>.c) and the same on
 * every CPU: its tile, the blocking it was tuned with, and the layout limits that depend on its tile and
 * vector width. The loops never read it alone: they read a context fitted to this CPU (below). */
typedef struct {
    const char *name;
    int mr, nr;          /* register tile */
    int nr_narrow;       /* 0, or the columns of a narrower loop the kernel runs for tiles of at most that many */
    int vector_bytes;    /* the kernel's vector loads: B rows aligned to this never split across cache lines */
    int mc, kc, nc;      /* cache blocks: A block mc x kc in L2, B block kc x nc in L3 (or L2, below) */
    int kc_large_l2;     /* kc for a core with 2 MiB of L2 or more (a taller A block then fits) */
    int b_block_in_l2;   /* 0: each B panel runs down the row block's tiles (the panel stays in L1, the A
                          * block in L2: BLIS's order). 1: nc is fitted to half the L2, and in a product at
                          * least as wide as tall each tile of A runs across the column group's panels (the
                          * tile stays in L1, the B block in L2: OpenBLAS's order), each K block of B
                          * packed just before use */
    int b_in_place_max_m;  /* a row-major B is read unpacked when M is at most this (few tiles reuse a panel) */
    int b_in_place_max_m_misaligned;  /* ... or this, when B's rows are not aligned to vector_bytes (split loads) */
    int b_in_place_max_m_misaligned_few_panels;  /* ... or this, when such a B is at most B_FEW_PANELS wide */
    int b_in_place_max_m_misaligned_shared;  /* ... or this many rows a thread when threads share a packed B */
    fc_gemm_ukr ukr;
    fc_gemm_pack_fn pack;
    fc_gemm_pack_fn pack_b;  /* NULL: B is packed as A is (`pack`); a bf16 kernel's B is packed in bf16 pairs */
} fc_gemm_ukernel;

/* A core's caches, as the OS reports them (0: unknown). */
typedef struct {
    int64_t l1_bytes, l1_ways, l2_bytes, l2_ways;
} fc_gemm_caches;

/* A micro-kernel fitted to this CPU's caches: what the loops (gemm.c, conv.c) read. dispatch.c makes
 * one per instruction set, once, when the library loads (fc_gemm_fit, context.c, whose table of tuning
 * thresholds says why each value is what it is). */
typedef struct {
    const fc_gemm_ukernel *uk;        /* the fixed description this context was fitted from */
    /* Its tile and functions, copied from the description so that the loops read one record (as BLIS's
     * context does): never set otherwise. */
    int mr, nr, nr_narrow, vector_bytes;
    fc_gemm_ukr ukr;
    fc_gemm_pack_fn pack, pack_b;
    /* Fitted to the caches: */
    int mc, kc, nc;                   /* cache blocks, from the micro-kernel's and the cache sizes */
    int kc_columns_of_a;              /* kc when A is read in place by columns (a line per k step) */
    int64_t aliased_a_copied_from_n;  /* MR rows of A 4 KiB apart (one L1 set) are read in place below
                                       * this N, from a copy with a padded row stride from it on */
    int64_t l2_way_bytes;             /* the L2's size over its ways, the span of its sets */
} fc_gemm_kernel;

void fc_gemm_fit(fc_gemm_kernel *kernel, const fc_gemm_ukernel *uk, const fc_gemm_caches *caches);

/* The micro-kernels, fc_gemm_<isa>_<MR>x<NR>, are listed in csrc/isa_list.h and declared by dispatch.c.
 * Each set's packing routine (pack.c, compiled once per set): */
void fc_gemm_pack_generic(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                          int64_t panel_stride, float *dst);
#if defined(__x86_64__) || defined(_M_X64)
void fc_gemm_pack_avx2(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                       int64_t panel_stride, float *dst);
void fc_gemm_pack_avx512(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                         int64_t panel_stride, float *dst);
#endif

/* A GEMM problem with op(A)(i, p) = a[i * a_rs + p * a_cs] and op(B)(p, j) = b[p * b_rs + j * b_cs]. */
typedef struct {
    int64_t m, n, k;
    const float *a; int64_t a_rs, a_cs;
    const float *b; int64_t b_rs, b_cs;
    float *c; int64_t ldc;
    float alpha, beta;
    const float *bias;
    int relu;
    const float *b_packed;  /* NULL, or op(B) already packed by fc_gemm_pack_b (then b is not read) */
} fc_gemm_problem;

/* The floats of a packed B panel's rows: NR, or the kernel's narrower width when all of N fits it.
 * Such a kernel reads no more of each row (a Dense layer of 10 units, a conv of 16 outputs), so its B
 * packs, and takes in L1, half the floats. */
static inline int64_t fc_gemm_b_panel_width(const fc_gemm_kernel *kr, int64_t n)
{
    return kr->nr_narrow > 0 && n <= kr->nr_narrow ? kr->nr_narrow : kr->nr;
}

/* Floats from one packed B panel to the next, in a K block of kc rows: its kc rows and one more. Laid
 * end to end, the panels sat a power of two apart, so the pack's stores of one k step to every panel
 * fell in one L1 set and evicted each other; the spare row moves each panel to the next sets. */
static inline int64_t fc_gemm_b_panel_stride(const fc_gemm_kernel *kr, int64_t kc)
{
    return (kc + 1) * kr->nr;
}

/* A GEMM called many times with the same B (a conv's weights, block after block) can pack B once:
 * fc_gemm_packed_b_floats gives the size of the packed copy, 0 when N is too wide for one (then pack
 * nothing and leave b_packed NULL), and fc_gemm_pack_b writes it. Only m, c and a may differ between
 * the problem packed for and the problems that use the copy. */
int64_t fc_gemm_packed_b_floats(const fc_gemm_kernel *kernel, const fc_gemm_problem *p);
void fc_gemm_pack_b(const fc_gemm_kernel *kernel, const fc_gemm_problem *p, float *dst);

/* Runs the problem with `kernel`; threads > 1 splits the blocks of C (never K) over OpenMP threads,
 * so every element of C gets the same arithmetic whatever the thread count. Its scratch (the packed B
 * and each thread's packed A) comes from the calling thread's FC_SCRATCH_GEMM slot: returns 0, or
 * FC_ERROR_NO_MEMORY (nothing computed) when that cannot be had. Between fc_call_begin and fc_call_end. */
int fc_gemm_run(const fc_gemm_kernel *kernel, const fc_gemm_problem *p, int threads);
/* The same in the caller's scratch: `ws` holds fc_gemm_workspace_floats(kernel, p, threads) floats,
 * 64-byte aligned (conv2d gives each thread's GEMMs a slice of its own block). */
int64_t fc_gemm_workspace_floats(const fc_gemm_kernel *kernel, const fc_gemm_problem *p, int threads);
void fc_gemm_run_in(const fc_gemm_kernel *kernel, const fc_gemm_problem *p, int threads, float *ws);

/* How many k steps ahead a micro-kernel fetches its B panel into L1. The panel is read again for every
 * row tile from L2, or from memory when read in place, and the hardware prefetchers left the first FMAs
 * of each k step waiting on it. */
enum { FC_B_PREFETCH_STEPS = 16 };

/* Fetches the m rows of an nr-wide tile of C while the k loop runs: C is read (beta != 0) or written at
 * the end, and for large C it comes from L3 or memory. Into L2 only: fetched into L1, the lines held
 * the L1's few miss buffers while the k loop's own loads waited. Every line of each row (a row that
 * starts inside a line spans one more), named by a float every 16 and the last one: a fixed count of
 * prefetches, quicker to issue than a loop over the row's line addresses. */
static inline void fc_prefetch_tile(const float *c, int64_t ldc, int m, int nr)
{
    for (int i = 0; i < m; i++) {
        const float *row = c + i * ldc;
        for (int j = 0; j < nr; j += 16) __builtin_prefetch(row + j, 0, 2);
        __builtin_prefetch(row + nr - 1, 0, 2);
    }
}

/* The scalar write-back of a tile held in a plain MR x NR array (the portable kernel). */
static inline void fc_store_tile(const float *acc, int acc_stride, float *c, int64_t ldc, int m, int n,
                                 const fc_tile_epilogue *ep)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float v = ep->alpha * acc[i * acc_stride + j];
            if (ep->beta != 0.0f) v += ep->beta * c[i * ldc + j];
            if (ep->bias) v += ep->bias[j];
            if (ep->relu && v < 0.0f) v = 0.0f;  /* NaN stays NaN, as np.maximum(v, 0) */
            c[i * ldc + j] = v;
        }
    }
}

#endif
