/* The one place that knows about CPUs: detects what the CPU and OS support (CPUID + XGETBV), picks
 * each op's kernels once, honours FASTCONV_ISA, and owns the thread-count setting, the call frame
 * (the per-call snapshot of the instruction set) and what happens to threads across fork(). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fastconv.h"
#include "dispatch.h"
#include "workspace.h"
#include "bench/peak.h"

#ifdef _OPENMP
#include <omp.h>
/* OpenMP 5.0; looked up at run time, so that a runtime without it (libgomp before GCC 9) still loads. */
#pragma weak omp_pause_resource_all
#endif

enum isa { ISA_GENERIC, ISA_AVX2, ISA_AVX512, ISA_COUNT };

static const char *const isa_names[ISA_COUNT] = { "generic", "avx2", "avx512" };

/* The kernel table: one row per instruction set, indexed by enum isa. */
static const struct isa_kernels {
    const fc_gemm_kernel *gemm;
    const fc_conv_direct_kernels *conv_direct;
    const fc_elementwise_kernels *elementwise;
    const fc_maxpool2x2_kernels *maxpool2x2;
    const fc_batchnorm_kernels *batchnorm;
    fc_fma_peak_fn fma_peak;
} kernel_table[ISA_COUNT] = {
    [ISA_GENERIC] = { &fc_gemm_generic_4x16, &fc_conv_direct_generic, &fc_elementwise_generic,
                      &fc_maxpool2x2_generic, &fc_batchnorm_generic, fc_fma_peak_generic },
#if defined(__x86_64__) || defined(_M_X64)
    [ISA_AVX2] = { &fc_gemm_avx2_6x16, &fc_conv_direct_avx2, &fc_elementwise_avx2, &fc_maxpool2x2_avx2,
                   &fc_batchnorm_avx2, fc_fma_peak_avx2 },
    [ISA_AVX512] = { &fc_gemm_avx512_14x32, &fc_conv_direct_avx512, &fc_elementwise_avx512, &fc_maxpool2x2_avx512,
                     &fc_batchnorm_avx512, fc_fma_peak_avx512 },
#endif
};

/* The GEMM kernels as run on this CPU: the table's, fitted to its caches once, when the library loads.
 * - K block: a core with 2 MiB of L2 holds a taller A block (AVX-512: 168 x 1024 floats, a third of
 *   it), and C is then read and written once per 1024 of K, not per 384: 1024^3-2048^3 run 3-8%
 *   faster on Emerald Rapids. The table's KC stays for 1 MiB L2s (Zen 4 and 5, where it was tuned).
 *   AVX2's 512 (Raptor Lake's P-cores; this CPU's AVX2 path) makes a K of 512 one block, not two of
 *   256 (Emerald Rapids, --isa avx2, 1 thread: 512^3 89.3 -> 90.5 GFLOPS, 128x512x784/tb 82.5 ->
 *   84.9; other shapes level, and blocks of 768 or 1024 gained no more).
 * - A row-major A whose rows are 4 KiB apart puts a tile's MR rows in one L1 set. Up to the set's
 *   ways that is harmless; an 8-way L1 (Zen 4) thrashes with the 14 rows of the AVX-512 tile, so such
 *   an A is copied to a padded stride first (a Dense layer's 128 x 9216 input: 76 -> 88 GFLOPS).
 *   A 12-way L1 (Golden Cove, Zen 5) loses 2-4% of the multiply to the extra misses, and the copy
 *   costs a share that shrinks as N grows (it is made once per block of A): there the copy pays from
 *   N = 2048 on (Emerald Rapids, NumPy's operand offsets, 1 thread: 2048^3 169.6 -> 173.6 GFLOPS,
 *   1024x2048x2048 159 -> 165, 2 threads 2048^3 331 -> 338), and below it costs up to 2% (1024^3
 *   171.3 / 169.3, the 128 x 9216 input 160 in place against 145).
 * - An A read in place by columns (conv's weight gradient, cols^T @ dy) brings one cache line into L1
 *   per k step of a tile, beside the B panel's NR floats: its K block keeps both in half of L1
 *   (AVX-512, 48 KiB: 128; 576x3136x64 with trans_a on Emerald Rapids 114-120 -> 131-138 GFLOPS,
 *   576x12544x64 91 -> 120-127, where 192 and more lose and 64 loses).
 * - A kernel that reads its B block from L2 (b_block_in_l2, gemm.h: AVX2) gets an N block of half the
 *   L2: 512 columns with a K block of 512 in 2 MiB. Each 6-row tile of A then stays in L1 across the
 *   block's panels, as in OpenBLAS's Haswell kernels. Before, a 32 KiB B panel stayed in L1 while
 *   12 KiB tiles of A streamed past it from L2, too much for a 48 KiB L1 (Emerald Rapids, --isa avx2,
 *   C harness, NumPy-like offsets, 1 thread: 1024^3 91.1 -> 92.5 GFLOPS, 2048^3 91.4 -> 92.6,
 *   128x128x9216/tb 80.4 -> 83.3; 768 columns gained less, 256-384 as much or less). Whatever the
 *   L2, at least B_BLOCK_MIN_NC columns.
 * - The span of the L2's sets (its size over its ways), from which gemm.c caps the K block of a B read
 *   in place whose row stride would stack its panel too deep in few sets (b_panel_max_rows). */
static fc_gemm_kernel gemm_kernels[ISA_COUNT];

enum {
    ALIASED_A_COPIED_FROM_N = 2048,  /* a 12-way L1 reads 14 aliased rows in place below this N */
    B_BLOCK_MIN_NC = 256,            /* conv packs its weights once when its outputs fit one B block */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* A cache parameter from the C library, or 0 where it does not say. */
static long cache_parameter(int name)
{
    const long value = sysconf(name);
    return value > 0 ? value : 0;
}

void fc_fit_gemm_blocking(int64_t l2_bytes, int64_t l1_bytes, int64_t l1_ways, int64_t l2_ways)
{
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_ASSOC) && \
    defined(_SC_LEVEL2_CACHE_ASSOC)
    if (l2_bytes < 0) l2_bytes = cache_parameter(_SC_LEVEL2_CACHE_SIZE);
    if (l1_bytes < 0) l1_bytes = cache_parameter(_SC_LEVEL1_DCACHE_SIZE);
    if (l1_ways < 0) l1_ways = cache_parameter(_SC_LEVEL1_DCACHE_ASSOC);
    if (l2_ways < 0) l2_ways = cache_parameter(_SC_LEVEL2_CACHE_ASSOC);
#endif
    /* Unknown (still negative, or 0): the table's K block, a 32 KiB L1, copies of aliased rows, and
     * 64 KiB L2 ways (the smallest span of these machines' L2 sets: Zen 5's 1 MiB in 16 ways). */
    if (l1_bytes <= 0) l1_bytes = 32 << 10;
    const int64_t l2_way_bytes = l2_bytes > 0 && l2_ways > 0 ? l2_bytes / l2_ways : 64 << 10;
    for (int i = 0; i < ISA_COUNT; i++) {
        if (!kernel_table[i].gemm) continue;
        fc_gemm_kernel *k = &gemm_kernels[i];
        *k = *kernel_table[i].gemm;
        if (l2_bytes >= 2L << 20) k->kc = k->kc_large_l2;
        if (k->b_block_in_l2) {  /* a block of half the L2 (a 512 KiB L2 where the size is unknown) */
            const int64_t l2 = l2_bytes > 0 ? l2_bytes : 512 << 10;
            const int64_t fit = l2 / 2 / ((int64_t)sizeof(float) * k->kc) / k->nr * k->nr;
            k->nc = (int)min64(k->nc, max64(B_BLOCK_MIN_NC, fit));
        }
        k->aliased_a_copied_from_n = k->mr <= l1_ways ? INT64_MAX : l1_ways >= 12 ? ALIASED_A_COPIED_FROM_N : 0;
        const int64_t line_and_b_row = 64 + (int64_t)sizeof(float) * k->nr;
        k->kc_columns_of_a = (int)min64(k->kc, max64(32, l1_bytes / 2 / line_and_b_row / 16 * 16));
        k->l2_way_bytes = l2_way_bytes;
    }
}

__attribute__((constructor)) static void fit_gemm_blocking_to_this_cpu(void) { fc_fit_gemm_blocking(-1, -1, -1, -1); }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

static unsigned long long read_xcr0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static int cpu_supports(enum isa isa)
{
    unsigned int a, b, c, d;
    if (isa == ISA_GENERIC) return 1;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || !fma) return 0;
    const unsigned long long xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return 0;  /* the OS saves XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    if (isa == ISA_AVX2) return avx2;
    /* AVX-512 also needs the OS to save opmask and the upper ZMM registers. */
    return avx2 && avx512f && (xcr0 & 0xE6) == 0xE6;
}
#else
static int cpu_supports(enum isa isa) { return isa == ISA_GENERIC; }
#endif

static enum isa best_isa(void)
{
    for (int i = ISA_COUNT - 1; i > ISA_GENERIC; i--)
        if (cpu_supports((enum isa)i)) return (enum isa)i;
    return ISA_GENERIC;
}

static int isa_from_name(const char *name)
{
    for (int i = 0; i < ISA_COUNT; i++)
        if (name && strcmp(name, isa_names[i]) == 0) return i;
    return -1;
}

/* The process-wide choice: made once (pthread_once), then changed only by fc_set_isa. */
static _Atomic int active_isa = ISA_COUNT;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void choose_isa(void)
{
    /* FASTCONV_ISA can only lower the choice; the Python layer reports a bad value. */
    enum isa chosen = best_isa();
    const int forced = isa_from_name(getenv("FASTCONV_ISA"));
    if (forced >= 0 && cpu_supports((enum isa)forced)) chosen = (enum isa)forced;
    atomic_store(&active_isa, (int)chosen);
}

static enum isa process_isa(void)
{
    pthread_once(&isa_once, choose_isa);
    return (enum isa)atomic_load_explicit(&active_isa, memory_order_relaxed);
}

/* The calling thread's call frame (workspace.h): its depth and, inside a call, the instruction set the
 * outermost fc_call_begin saw. Every kernel of the call, and every size it computes, uses that one:
 * fc_set_isa from another thread takes effect from the next call on. OpenMP workers never look it up;
 * the calling thread hands them the kernel tables it took. */
static __thread int call_depth;
static __thread int call_isa = -1;

void fc_call_begin(void)
{
    if (call_depth++ == 0) call_isa = (int)process_isa();
}

int fc_call_end(int status)
{
    if (--call_depth == 0) {
        fc_workspace_call_end();
        call_isa = -1;
    }
    return status;
}

static enum isa current_isa(void) { return call_isa >= 0 ? (enum isa)call_isa : process_isa(); }

const char *fc_isa_name(void) { return isa_names[current_isa()]; }

int fc_isa_supported(const char *name)
{
    const int isa = isa_from_name(name);
    return isa >= 0 && cpu_supports((enum isa)isa);
}

int fc_set_isa(const char *name)
{
    const int isa = isa_from_name(name);
    if (isa < 0 || !cpu_supports((enum isa)isa)) return -1;
    pthread_once(&isa_once, choose_isa);  /* the first choice never overwrites this one */
    atomic_store(&active_isa, isa);
    return 0;
}

const fc_gemm_kernel *fc_active_gemm_kernel(void) { return &gemm_kernels[current_isa()]; }

int64_t fc_fma_peak(const char *isa_name, int64_t iters, int threads)
{
    const int isa = isa_name ? isa_from_name(isa_name) : (int)current_isa();
    if (isa < 0 || !cpu_supports((enum isa)isa)) return -1;
    const fc_fma_peak_fn run = kernel_table[isa].fma_peak;
    int64_t flops = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1) reduction(+ : flops)
    flops += run(iters);
    return flops;
}

const char *fc_gemm_kernel_name(void) { return fc_active_gemm_kernel()->name; }

const fc_conv_direct_kernels *fc_active_conv_direct(void) { return kernel_table[current_isa()].conv_direct; }

const fc_elementwise_kernels *fc_active_elementwise(void) { return kernel_table[current_isa()].elementwise; }

const fc_maxpool2x2_kernels *fc_active_maxpool2x2(void) { return kernel_table[current_isa()].maxpool2x2; }

const fc_batchnorm_kernels *fc_active_batchnorm(void) { return kernel_table[current_isa()].batchnorm; }

void fc_gemm_blocking(int out[5])
{
    const fc_gemm_kernel *k = fc_active_gemm_kernel();
    out[0] = k->mr; out[1] = k->nr; out[2] = k->mc; out[3] = k->kc; out[4] = k->nc;
}

const char *fc_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

int fc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* set_num_threads is one setting for the whole process, as OMP_NUM_THREADS is: calls from every
 * Python thread follow it, threads started later included, whichever thread set it. 0: not set,
 * follow the OpenMP runtime (OMP_NUM_THREADS, else every core). */
static _Atomic int thread_setting = 0;
/* Set in a child made by fork() (below): one thread until the child sets its own count. */
static _Atomic int forked_child = 0;
#ifdef _OPENMP
/* The OpenMP default when the library loaded. A thread whose OpenMP limit is below it was lowered on
 * purpose (threadpoolctl's threadpool_limits, per thread), and that lower limit wins in that thread. */
static int openmp_default_threads;
__attribute__((constructor)) static void read_openmp_default(void) { openmp_default_threads = omp_get_max_threads(); }
#endif

void fc_set_num_threads(int n)
{
    atomic_store(&thread_setting, n);
    atomic_store(&forked_child, 0);
}

int fc_get_num_threads(void)
{
#ifdef _OPENMP
    if (atomic_load_explicit(&forked_child, memory_order_relaxed)) return 1;
    const int here = omp_get_max_threads();  /* this thread's OpenMP limit */
    const int setting = atomic_load_explicit(&thread_setting, memory_order_relaxed);
    if (setting <= 0) return here;
    return here < openmp_default_threads && here < setting ? here : setting;
#else
    return 1;
#endif
}

/* fork(). GNU libgomp keeps, per thread that has started a parallel region, a pool of worker threads
 * that it reuses; fork() copies the pool's bookkeeping but not its threads, so a child's first
 * parallel region waited forever for workers that do not exist. Before every fork, the forking
 * thread's pool is stopped (omp_pause_resource_all: its workers exit and are joined; the parent
 * starts new ones at its next parallel region, about 50 us), so the child starts from no pool and
 * can create its own. The child then runs every kernel on one thread until it calls
 * fc_set_num_threads (as other OpenMP libraries do: N forked workers each using every core would
 * oversubscribe the machine, and a runtime that cannot pause stays safe with one thread). The
 * workspace registry's lock is held across the fork, so the child never inherits it locked. */
static void before_fork(void)
{
#ifdef _OPENMP
    /* Not from inside a parallel region or a call (a kernel never forks; libgomp refuses there). */
    if (omp_pause_resource_all && call_depth == 0 && !omp_in_parallel()) omp_pause_resource_all(omp_pause_soft);
#endif
    fc_workspace_before_fork();
}

static void after_fork_in_parent(void) { fc_workspace_after_fork(0); }

static void after_fork_in_child(void)
{
    fc_workspace_after_fork(1);
    atomic_store(&forked_child, 1);
}

__attribute__((constructor)) static void install_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

int fc_threads_for_work(double flops)
{
    /* About 1 MFLOP per thread before a parallel region pays for its start-up and barriers. */
    const double per_thread = 1e6;
    int n = fc_get_num_threads();
    if (flops < per_thread * 2) return 1;
    if (flops / per_thread < n) n = (int)(flops / per_thread);
    return n < 1 ? 1 : n;
}

int fc_threads_for_values(double values)
{
    /* Streaming one float through a simple kernel costs about as long as 16 FLOPs of GEMM. */
    return fc_threads_for_work(16.0 * values);
}

int fc_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void fc_thread_share(int64_t n, int64_t unit, int64_t *i0, int64_t *i1)
{
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int64_t tid = 0, team = 1;
#endif
    const int64_t units = (n + unit - 1) / unit;
    *i0 = units * tid / team * unit;
    *i1 = tid == team - 1 ? n : units * (tid + 1) / team * unit;
    if (*i0 > n) *i0 = n;
    if (*i1 > n) *i1 = n;
}
