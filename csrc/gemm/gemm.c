/* The loops around the micro-kernel, written once for every instruction set (BLIS/Goto design):
 *   jc over n by NC  -> pc over k by KC (pack B block) -> ic over m by MC (pack A block)
 *   -> jr over NR columns -> ir over MR rows -> micro-kernel
 * (or ir outside jr where the kernel keeps its B block in L2: gemm.h's b_block_in_l2).
 *
 * Threads. K is never split, so every element of C is summed in the same order whatever the thread
 * count (results are bitwise identical for 1 and N threads). A tile of C is one row block (up to MC
 * rows, its A block in the thread's private L2) times a group of NR column panels.
 * A C at least as wide as it is tall (B no smaller than A) is cut into one column group per thread:
 * each thread packs and reads only its own B panels, with no barrier, and every thread reads all of
 * A, the smaller operand (taller shapes lose this way: each thread would stream all of their large A).
 * Otherwise, each KC step, the threads pack the shared B block together (a contiguous share of its NR
 * panels each; the block lives in the shared L3), then share out the tiles. Large M: one column
 * group, and the row blocks are sized so their count is a multiple of the thread count (no thread
 * idles on the last round). Small M (a weight gradient): the columns (jr) are cut into groups first,
 * then the row blocks shrink towards MR, so up to (M / MR) * (N / NR) threads get work; this scales to
 * 16+ cores while each tile still runs whole KC-long micro-kernel calls. */
#include <stddef.h>
#include <string.h>

#include "gemm.h"
#include "tuning.h"
#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"

#ifdef _OPENMP
#include <omp.h>
static int thread_num(void) { return omp_get_thread_num(); }
static int team_size(void) { return omp_get_num_threads(); }
#else
static int thread_num(void) { return 0; }
static int team_size(void) { return 1; }
#endif


static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The floats of a packed K block of B: nc / NR panels of kc_max rows, fc_gemm_b_panel_stride apart. */
static int64_t b_block_floats(const fc_gemm_kernel *kr, int64_t kc_max, int64_t nc)
{
    return nc / kr->nr * fc_gemm_b_panel_stride(kr, kc_max);
}

/* Packs the NR-column panels [jp_lo, jp_hi) of op(B)'s columns from jc, K rows [k0, k1), into the
 * layout the loops read: K block pc at dst + (pc - k0) / kc_max * b_block_floats, panel jp of it at
 * + jp * fc_gemm_b_panel_stride(kc_max) (the full block's size, so a panel keeps its place in a shorter
 * last block: with split columns, the thread packing it for the next block must not write into
 * another thread's panel). */
static void pack_b_panels(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int64_t kc_max, int64_t nc,
                          int64_t jc, int64_t k0, int64_t k1, int64_t jp_lo, int64_t jp_hi, float *dst)
{
    const int64_t nr = kr->nr;
    for (int64_t pc = k0; pc < k1; pc += kc_max)
        kr->pack_b(p->b + pc * p->b_rs + jc * p->b_cs, p->b_cs, p->b_rs, jp_lo * nr, min64(jp_hi * nr, p->n - jc),
                   min64(kc_max, p->k - pc), (int)fc_gemm_b_panel_width(kr, p->n), fc_gemm_b_panel_stride(kr, kc_max),
                   dst + (pc - k0) / kc_max * b_block_floats(kr, kc_max, nc));
}

/* A column-major op(A) (trans_a: conv's weight gradient, cols^T) is read in place when N is narrow:
 * packing would cost a large part of the multiply. Not when its columns are a multiple of 4 KiB apart:
 * a tile's k steps would then all read one L1 set (a Dense layer's dw, x^T @ dy). */
static int a_columns_in_place(const fc_gemm_problem *p)
{
    return p->a_cs != 1 && p->a_rs == 1 && p->n <= A_IN_PLACE_MAX_COLUMNS && p->a_cs % 1024 != 0;
}

/* A row-major B with whole NR panels is read in place when few row tiles share each panel (M at most
 * the kernel's b_in_place_max_m: a Dense layer's batch, conv's weight gradient), where packing would
 * cost a large part of the multiply; not when its rows are a multiple of 4 KiB apart, as they would
 * then share L1 sets. Rows not aligned to the kernel's vectors (NumPy's arrays start anywhere on 16
 * bytes) make vector loads of the panel split across two cache lines, a cost paid again by each row
 * tile, so the kernel sets lower M limits for them: one for any B, a higher one for a B at most
 * B_FEW_PANELS panels wide. "Aligned" is to the kernel's own vector width (AVX2's 32-byte loads do
 * not split on rows 32 bytes into a line).
 * When `sharing` threads split the rows, a packed B is shared: each reads the panels the others packed,
 * from their caches. Reading a misaligned B in place then pays up to more rows per thread. */
static int b_in_place(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int sharing)
{
    const int64_t align = kr->vector_bytes;
    const int b_rows_aligned = (uintptr_t)p->b % align == 0 && p->b_rs * (int64_t)sizeof(float) % align == 0;
    const int64_t max_m = p->n <= B_FEW_PANELS * kr->nr ? kr->uk->b_in_place_max_m_misaligned_few_panels
                                                        : kr->uk->b_in_place_max_m_misaligned;
    const int misaligned_ok = sharing > 1 ? ceil_div(p->m, sharing) <= kr->uk->b_in_place_max_m_misaligned_shared
                                          : p->m <= max_m;
    return !p->b_packed && p->b_cs == 1 && p->n % kr->nr == 0 && p->m <= kr->uk->b_in_place_max_m &&
           (b_rows_aligned || misaligned_ok) && p->b_rs % 1024 != 0;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b != 0) {
        const int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* The rows of a B panel read in place lie ldb apart, so they fall on W / gcd(ldb bytes, W) of the L2's
 * sets, W being the span of its sets (its size over its ways), and kc rows stack kc * gcd / W lines
 * deep on each. Deeper than B_PANEL_MAX_L2_WAYS, the panel evicts itself before the next row tile
 * reads it again, and comes from L3 every time (a Dense layer of 512 units: B rows 2 KiB apart). So
 * such a B's K block is cut to this. */
static int64_t b_panel_max_rows(const fc_gemm_kernel *kr, const fc_gemm_problem *p)
{
    const int64_t way = kr->l2_way_bytes, row_bytes = p->b_rs * (int64_t)sizeof(float);
    if (way <= 0) return INT64_MAX;  /* a kernel dispatch.c did not fit (none is used unfitted) */
    return way * B_PANEL_MAX_L2_WAYS / gcd64(row_bytes < 0 ? -row_bytes : row_bytes, way);
}

/* K blocks of equal size (K = 288 is 2 x 144, not 256 + 32): fewer passes over C for the same L1
 * footprint of the B panel. An A read in place by columns takes a cache line per k step of each
 * tile, so its K block is the kernel's kc_columns_of_a, which keeps those lines and the B panel in
 * L1; a B read in place keeps its panel's rows in few enough L2 ways. The sizes depend on the shape
 * and on whether B is read in place (false for a B packed by fc_gemm_pack_b, so its K blocks are
 * the same for every M that uses it), never on the thread count. */
static int64_t k_block(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int b_read_in_place)
{
    int64_t kc_max = a_columns_in_place(p) ? kr->kc_columns_of_a : kr->kc;
    if (b_read_in_place) kc_max = min64(kc_max, b_panel_max_rows(kr, p));
    return ceil_div(p->k, ceil_div(p->k, kc_max));
}
static int64_t n_block(const fc_gemm_kernel *kr, const fc_gemm_problem *p)
{
    return min64(kr->nc, ceil_div(p->n, kr->nr) * kr->nr);
}

int64_t fc_gemm_packed_b_floats(const fc_gemm_kernel *kr, const fc_gemm_problem *p)
{
    if (p->k <= 0 || p->n <= 0 || p->n > kr->nc) return 0;
    return ceil_div(p->k, k_block(kr, p, 0)) * b_block_floats(kr, k_block(kr, p, 0), n_block(kr, p));
}

void fc_gemm_pack_b(const fc_gemm_kernel *kr, const fc_gemm_problem *p, float *dst)
{
    pack_b_panels(kr, p, k_block(kr, p, 0), n_block(kr, p), 0, 0, p->k, 0, ceil_div(p->n, kr->nr), dst);
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

/* Number of row blocks: enough for blocks of at most about MC rows, and as many as the threads need
 * (see the comment at the top). Block ib holds MR-row panels [P * ib / blocks, P * (ib + 1) / blocks)
 * of the P panels, so the blocks, and the threads' shares of them, differ by one panel at most. */
static int64_t plan_m_blocks(const fc_gemm_kernel *kr, int64_t m, int64_t n_panels, int threads, int split_columns)
{
    int64_t m_blocks = ceil_div(m, kr->mc);
    if (threads > 1 && !split_columns) {
        if (m_blocks >= threads) {
            m_blocks = ceil_div(m_blocks, threads) * threads;
        } else {
            const int64_t groups = min64(n_panels, ceil_div(threads, m_blocks));
            m_blocks = max64(m_blocks, ceil_div(threads, groups));
        }
    }
    return min64(m_blocks, ceil_div(m, kr->mr));
}

typedef struct {
    int64_t kc, nc;      /* block sizes for this problem */
    int64_t m_blocks;    /* row blocks of (nearly) equal size, at most mc rows each */
    int64_t mc;          /* rows of the largest block: the packed A buffer's height */
    int64_t k_chunk;     /* K rows of B packed between two barriers: a whole number of KC blocks */
    int a_in_place;      /* the micro-kernel reads A (unit row or column stride) where it lies */
    int a_restrided;     /* ... or a row-major A from a copy of its rows with a stride that is no multiple of 4 KiB */
    int b_in_place;      /* ... and B (row-major, whole NR panels) */
    int split_columns;   /* one column group per thread, each packing its own B panels */
    int b_block_in_l2;   /* each tile of A runs across its group's panels, the B block in L2 (gemm.h) */
    int threads;         /* the team size the tiles are cut for */
} gemm_plan;

/* Thread `tid` of `team`'s contiguous share [*lo, *hi) of `count` items. */
static void share(int64_t count, int tid, int team, int64_t *lo, int64_t *hi)
{
    *lo = count * tid / team;
    *hi = count * (tid + 1) / team;
}

/* Waits for the team. A team of one has no parallel region of its own: it may run inside a caller's
 * (conv2d's per-thread blocks), whose threads must not be synchronised, hence no orphaned barrier. */
static void team_barrier(int team)
{
    if (team > 1) {
        #pragma omp barrier
    }
}

/* Thread `tid`'s share of the loops, run by every thread of a team of `team`. The work is shared by
 * hand rather than with `omp for`, which would bind to an enclosing region when team == 1. */
static void gemm_thread(const fc_gemm_kernel *kr, const fc_gemm_problem *p, const gemm_plan *plan, float *b_pack,
                        float *a_pack, int tid, int team)
{
    const int64_t mr = kr->mr, nr = kr->nr, kc_max = plan->kc, nc_max = plan->nc;
    const fc_gemm_ukr ukr = kr->ukr;
    const fc_gemm_pack_fn pack = kr->pack;
    const int64_t rs_b = plan->b_in_place ? p->b_rs : fc_gemm_b_panel_width(kr, p->n);  /* B panel row stride */
    const int64_t b_panel_stride = fc_gemm_b_panel_stride(kr, kc_max);
    const int64_t b_block_size = b_block_floats(kr, kc_max, nc_max);
    const int a_in_place = plan->a_in_place, a_restrided = plan->a_restrided, threads = plan->threads;
    /* A restrided block holds mc_max + 1 rows of kc_max + A_ROW_PAD floats: the row past a partial
     * tile's last may be read (and is ignored). */
    const int64_t a_ld = kc_max + A_ROW_PAD;
    for (int64_t jc = 0; jc < p->n; jc += nc_max) {
        const int64_t nc = min64(nc_max, p->n - jc);
        const int64_t n_panels = ceil_div(nc, nr);
        const int64_t m_blocks = plan->m_blocks, m_panels = ceil_div(p->m, mr);
        /* Split columns: one group per thread of the team that actually runs, which OpenMP may make
         * smaller than asked (OMP_THREAD_LIMIT, a nested region): every group then has a thread. */
        int64_t groups = plan->split_columns ? min64(n_panels, team)
                         : m_blocks >= threads ? 1 : min64(n_panels, ceil_div(threads, m_blocks));
        const int64_t panels_per_group = ceil_div(n_panels, groups);
        groups = ceil_div(n_panels, panels_per_group);
        /* Tile t is (row block t / groups, group t % groups). A shared B: the team shares out a range
         * [lo, hi) of tiles and of panels to pack. Split columns: thread tid takes every tile of group
         * tid (t = tid, tid + groups, ...) and packs that group's panels; a thread past the last group
         * has nothing to do. */
        int64_t lo, hi, own_lo, own_hi;
        if (plan->split_columns) {
            const int64_t group = min64(tid, groups);
            lo = group;
            hi = group < groups ? m_blocks * groups : group;
            own_lo = min64(n_panels, group * panels_per_group);
            own_hi = min64(n_panels, (group + 1) * panels_per_group);
        } else {
            share(m_blocks * groups, tid, team, &lo, &hi);
            share(n_panels, tid, team, &own_lo, &own_hi);
        }
        const int64_t tile_step = plan->split_columns ? groups : 1;
        /* The same tiles of C go to the same thread for every K block, so C needs no barrier; the
         * threads only meet around each packed chunk of B (one or more K blocks) that they share. */
        const int shared_b = !p->b_packed && !plan->b_in_place && !plan->split_columns;
        /* A narrower last NC block moves panels to other groups: their new owners must not overwrite
         * them while the old ones may still read them. */
        if (plan->split_columns && jc > 0 && !p->b_packed && !plan->b_in_place) team_barrier(team);
        for (int64_t chunk = 0; chunk < p->k; chunk += plan->k_chunk) {
            const int64_t chunk_end = min64(p->k, chunk + plan->k_chunk);
            if (!p->b_packed && !plan->b_in_place) {
                pack_b_panels(kr, p, kc_max, nc_max, jc, chunk, chunk_end, own_lo, own_hi, b_pack);
                if (shared_b) team_barrier(team);  /* B chunk packed */
            }
            const float *b_chunk = p->b_packed ? p->b_packed : b_pack;
            for (int64_t pc = chunk; pc < chunk_end; pc += kc_max) {
                const int64_t kc = min64(kc_max, p->k - pc);
                const int last_k_block = pc + kc == p->k;
                const float *b_block = plan->b_in_place ? NULL : b_chunk + (pc - chunk) / kc_max * b_block_size;
                fc_tile_epilogue ep = {
                    .alpha = p->alpha, .beta = pc == 0 ? p->beta : 1.0f,
                    .bias = NULL, .relu = last_k_block && p->relu,
                };
                int64_t packed_block = -1;
                for (int64_t t = lo; t < hi; t += tile_step) {
                    const int64_t ib = t / groups, g = t % groups;
                    const int64_t ic = mr * (m_panels * ib / m_blocks);
                    const int64_t mc = min64(p->m, mr * (m_panels * (ib + 1) / m_blocks)) - ic;
                    const float *a_block = p->a + ic * p->a_rs + pc * p->a_cs;
                    /* Panels [0, in_place_end) are read where they lie. A tile reads its rows rounded up
                     * to even (gemm.h), so only a last panel of odd height would read past A: that one
                     * is packed (64^3 on AVX-512: its 8-row panel no longer costs a scalar transpose). */
                    const int64_t in_place_end = !a_in_place ? 0 : mc % mr % 2 == 0 ? mc : mc / mr * mr;
                    if (packed_block != ib) {
                        if (a_restrided) {
                            for (int64_t i = 0; i < mc; i++)
                                memcpy(a_pack + i * a_ld, a_block + i * p->a_rs, sizeof(float) * (size_t)kc);
                        } else {
                            /* the panels not read in place, panel ir at a_pack + ir * kc */
                            pack(a_block, p->a_rs, p->a_cs, in_place_end, mc, kc, (int)mr, mr * kc, a_pack);
                        }
                        packed_block = ib;
                    }
                    /* The block's row tiles times the group's panels: panel by panel, each down the
                     * block's tiles; or, with the B block in L2, tile by tile, each across the panels.
                     * Two loops rather than one over a tile index: the division cost at a short K. */
                    const int64_t jp_first = g * panels_per_group;
                    const int64_t cols_of_tiles = min64(n_panels, jp_first + panels_per_group) - jp_first;
                    const int64_t rows_of_tiles = ceil_div(mc, mr);
                    const int across = plan->b_block_in_l2;
                    const int64_t outer_tiles = across ? rows_of_tiles : cols_of_tiles;
                    const int64_t inner_tiles = across ? cols_of_tiles : rows_of_tiles;
                    for (int64_t outer = 0; outer < outer_tiles; outer++) {
                        for (int64_t inner = 0; inner < inner_tiles; inner++) {
                            const int64_t ir = mr * (across ? outer : inner);
                            const int64_t jp = jp_first + (across ? inner : outer);
                            const int64_t j = jc + jp * nr;
                            const int cols = (int)min64(nr, p->n - j);
                            ep.bias = last_k_block && p->bias ? p->bias + j : NULL;
                            const float *b_panel =
                                plan->b_in_place ? p->b + pc * p->b_rs + j : b_block + jp * b_panel_stride;
                            const int rows = (int)min64(mr, mc - ir);
                            const int in_place = ir < in_place_end;
                            const float *a = a_restrided ? a_pack + ir * a_ld
                                             : in_place ? a_block + ir * p->a_rs : a_pack + ir * kc;
                            const int64_t rs_a = a_restrided ? a_ld : in_place ? p->a_rs : 1;
                            const int64_t cs_a = a_restrided || in_place ? p->a_cs : mr;
                            /* A read in place comes from memory (or L3) for the group's first panel, in
                             * short rows the hardware prefetchers pick up late: the next tile's rows are
                             * fetched while this one runs. */
                            const float *a_next = in_place && p->a_cs == 1 && jp == jp_first && ic + ir + mr < p->m
                                                  ? a + mr * rs_a : NULL;
                            ukr(kc, a, rs_a, cs_a, a_next, b_panel, rs_b, p->c + (ic + ir) * p->ldc + j, p->ldc,
                                    rows, cols, &ep);
                        }
                    }
                }
            }
            if (shared_b) team_barrier(team);  /* B chunk no longer read */
        }
    }
}

/* The plan of a problem with at least one element of C and a K of at least 1, and the floats of its
 * scratch: the packed B chunk (0 when B is read in place or packed beforehand) and each thread's
 * packed A block (a restrided block holds mc + 1 rows of kc + A_ROW_PAD floats: the row past a partial
 * tile's last may be read, and is ignored). */
static void make_plan(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int threads, gemm_plan *plan_out,
                      int64_t *b_floats, int64_t *a_floats)
{
    const int64_t nr = kr->nr;
    gemm_plan plan;
    plan.nc = n_block(kr, p);
    plan.split_columns = threads > 1 && p->m <= p->n && plan.nc / nr >= threads;
    /* Only a product at least as wide as tall: a tall one's few panels, each read from L1 down the row
     * block, run faster the BLIS way. */
    plan.b_block_in_l2 = kr->uk->b_block_in_l2 && p->m <= p->n;
    /* Split columns give each thread its share of a B block to pack and read: one kept in L2 is then
     * `threads` times as wide, each share the half of its core's L2. Not for a B packed beforehand,
     * whose layout has the blocks of n_block. */
    if (plan.b_block_in_l2 && plan.split_columns && !p->b_packed)
        plan.nc = min64(plan.nc * threads, ceil_div(p->n, nr) * nr);
    plan.b_in_place = b_in_place(kr, p, plan.split_columns ? 1 : threads);
    plan.kc = k_block(kr, p, plan.b_in_place);
    plan.m_blocks = plan_m_blocks(kr, p->m, plan.nc / nr, threads, plan.split_columns);
    plan.mc = ceil_div(ceil_div(p->m, kr->mr), plan.m_blocks) * kr->mr;
    /* op(A) with a unit stride (row-major, or trans_a as in conv's weight gradient) is read in place
     * by the micro-kernel when N is narrow (im2col GEMMs, Dense layers, dw): packing would cost a
     * large part of the multiply. A wider product reads a row-major A in place too (packing is a
     * scalar transpose, 3-5% of a square product), unless the tile's MR rows would share one L1 set
     * (a multiple of 4 KiB apart) and the kernel's blocking says this L1 does not stand that at this
     * N (dispatch.c): then each row block is copied row by row (memcpy) with a padded stride and read
     * from there. Column-major A is packed: the k loop would step lda floats at a time. */
    const int a_rows_in_place = p->a_rs % 1024 != 0 || p->n < kr->aliased_a_copied_from_n;
    plan.a_in_place = p->a_cs == 1 ? a_rows_in_place : a_columns_in_place(p);
    plan.a_restrided = p->a_cs == 1 && !a_rows_in_place;
    plan.threads = threads;
    /* Pack B for as many K blocks at once as fit the budget: a Dense layer's long K then costs two
     * barriers per call rather than two per K block (a sleeping thread's wake-up is microseconds).
     * Where the kernel reads its B block from L2, the budget is one such block (kc x nc, half the L2):
     * K blocks packed ahead would evict the one in use. */
    const int64_t chunk_floats = plan.b_block_in_l2 ? (int64_t)kr->kc * kr->nc : B_CHUNK_FLOATS;
    plan.k_chunk = plan.kc * max64(1, chunk_floats / (plan.kc * plan.nc));
    *b_floats = 0;
    if (p->b_packed || plan.b_in_place)  /* packed whole by fc_gemm_pack_b, or not packed: no barriers */
        plan.k_chunk = ceil_div(p->k, plan.kc) * plan.kc;
    else
        *b_floats = fc_lines(min64(plan.k_chunk / plan.kc, ceil_div(p->k, plan.kc)) *
                             b_block_floats(kr, plan.kc, plan.nc));
    *a_floats = fc_lines(plan.a_restrided ? (plan.mc + 1) * (plan.kc + A_ROW_PAD) : plan.mc * plan.kc);
    *plan_out = plan;
}

int64_t fc_gemm_workspace_floats(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int threads)
{
    if (p->m <= 0 || p->n <= 0 || p->k <= 0) return 0;
    gemm_plan plan;
    int64_t b_floats, a_floats;
    make_plan(kr, p, threads, &plan, &b_floats, &a_floats);
    return b_floats + threads * a_floats;
}

void fc_gemm_run_in(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int threads, float *ws)
{
    if (p->m <= 0 || p->n <= 0) return;
    if (p->k <= 0) { epilogue_only(p); return; }
    gemm_plan plan;
    int64_t b_floats, a_floats;
    make_plan(kr, p, threads, &plan, &b_floats, &a_floats);
    float *b_pack = b_floats ? ws : NULL, *a_packs = ws + b_floats;
    if (threads > 1) {
        /* A runtime may give fewer threads than asked, never more: each has its own A block. */
        #pragma omp parallel num_threads(threads)
        gemm_thread(kr, p, &plan, b_pack, a_packs + thread_num() * a_floats, thread_num(), team_size());
    } else {
        gemm_thread(kr, p, &plan, b_pack, a_packs, 0, 1);
    }
}

int fc_gemm_run(const fc_gemm_kernel *kr, const fc_gemm_problem *p, int threads)
{
    const int64_t floats = fc_gemm_workspace_floats(kr, p, threads);
    float *ws = floats ? fc_scratch(FC_SCRATCH_GEMM, floats) : NULL;
    if (floats && !ws) return FC_ERROR_NO_MEMORY;
    fc_gemm_run_in(kr, p, threads, ws);
    return FC_OK;
}

int fc_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
            float *c, int64_t ldc, const float *bias, int relu)
{
    const fc_gemm_problem p = {
        .m = m, .n = n, .k = k,
        .a = a, .a_rs = trans_a ? 1 : lda, .a_cs = trans_a ? lda : 1,
        .b = b, .b_rs = trans_b ? 1 : ldb, .b_cs = trans_b ? ldb : 1,
        .c = c, .ldc = ldc, .alpha = alpha, .beta = beta, .bias = bias, .relu = relu,
    };
    fc_call_begin();
    return fc_call_end(fc_gemm_run(fc_active_gemm_kernel(), &p, fc_threads_for_work((double)m * n * k)));
}
