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

/* The instruction sets of csrc/isa_list.h, worst first. */
enum isa {
#define FC_ISA(name, ukernel, flags) ISA_##name,
#include "isa_list.h"
    ISA_COUNT
};

static const char *const isa_names[ISA_COUNT] = {
#define FC_ISA(name, ukernel, flags) #name,
#include "isa_list.h"
};

/* Each set's tables, as the list names them. */
#define DECLARE_TABLE(isa, type, table, file) extern const type fc_##table##_##isa;
#define FC_ISA(name, ukernel, flags)                    \
    extern const fc_gemm_ukernel fc_gemm_##ukernel;     \
    int64_t fc_fma_peak_##name(int64_t iters);          \
    FC_PER_ISA_TABLES(DECLARE_TABLE, name)
#include "isa_list.h"

/* The kernel table: one row per instruction set, indexed by enum isa. */
#define TABLE_MEMBER(isa, type, table, file) const type *table;
#define TABLE_ENTRY(isa, type, table, file) .table = &fc_##table##_##isa,
static const struct isa_kernels {
    const fc_gemm_ukernel *gemm;
    fc_fma_peak_fn fma_peak;
    FC_PER_ISA_TABLES(TABLE_MEMBER, _)
} kernel_table[ISA_COUNT] = {
#define FC_ISA(name, ukernel, flags) \
    [ISA_##name] = { .gemm = &fc_gemm_##ukernel, .fma_peak = fc_fma_peak_##name, FC_PER_ISA_TABLES(TABLE_ENTRY, name) },
#include "isa_list.h"
};

/* The bfloat16 micro-kernels: the portable one (any CPU) and, per instruction set, the one of
 * isa_list.h's FC_BF16_GEMM lines (or none). */
extern const fc_gemm_ukernel fc_gemm_generic_bf16_4x16;
#define FC_BF16_GEMM(isa, gemm, flags) extern const fc_gemm_ukernel fc_gemm_##gemm;
#include "isa_list.h"
static const fc_gemm_ukernel *const bf16_ukernels[ISA_COUNT] = {
#define FC_BF16_GEMM(isa, gemm, flags) [ISA_##isa] = &fc_gemm_##gemm,
#include "isa_list.h"
};

/* Instruction set i's bfloat16 micro-kernel, or NULL where it has none or this build could not compile it. */
static const fc_gemm_ukernel *bf16_ukernel(int i) { return bf16_ukernels[i] && bf16_ukernels[i]->ukr ? bf16_ukernels[i] : NULL; }

/* The GEMM micro-kernels fitted to this CPU's caches (gemm.h), one per instruction set, and the same
 * for the bfloat16 ones: made when the library loads, before any call can read them. */
static fc_gemm_kernel gemm_kernels[ISA_COUNT], bf16_kernels[ISA_COUNT], portable_bf16_kernel;

/* A cache parameter from the C library, or 0 where it does not say. */
static int64_t cache_parameter(int name)
{
    const long value = sysconf(name);
    return value > 0 ? value : 0;
}

void fc_fit_gemm_blocking(int64_t l2_bytes, int64_t l1_bytes, int64_t l1_ways, int64_t l2_ways)
{
    fc_gemm_caches caches = { .l1_bytes = l1_bytes, .l1_ways = l1_ways, .l2_bytes = l2_bytes, .l2_ways = l2_ways };
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_ASSOC) && \
    defined(_SC_LEVEL2_CACHE_ASSOC)
    if (l2_bytes < 0) caches.l2_bytes = cache_parameter(_SC_LEVEL2_CACHE_SIZE);
    if (l1_bytes < 0) caches.l1_bytes = cache_parameter(_SC_LEVEL1_DCACHE_SIZE);
    if (l1_ways < 0) caches.l1_ways = cache_parameter(_SC_LEVEL1_DCACHE_ASSOC);
    if (l2_ways < 0) caches.l2_ways = cache_parameter(_SC_LEVEL2_CACHE_ASSOC);
#endif
    for (int i = 0; i < ISA_COUNT; i++) {
        if (kernel_table[i].gemm) fc_gemm_fit(&gemm_kernels[i], kernel_table[i].gemm, &caches);
        if (bf16_ukernel(i)) fc_gemm_fit(&bf16_kernels[i], bf16_ukernel(i), &caches);
    }
    fc_gemm_fit(&portable_bf16_kernel, &fc_gemm_generic_bf16_4x16, &caches);
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
    if (isa == ISA_generic) return 1;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || !fma) return 0;
    const unsigned long long xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return 0;  /* the OS saves XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    if (isa == ISA_avx2) return avx2;
    /* AVX-512 also needs the OS to save opmask and the upper ZMM registers. */
    return avx2 && avx512f && (xcr0 & 0xE6) == 0xE6;
}

/* Whether the CPU runs instruction set isa's bfloat16 kernel: for AVX-512, AVX512_BF16 (CPUID leaf 7,
 * subleaf 1, EAX bit 5) on top of the set itself (which checked the OS's AVX-512 state with XGETBV).
 * Asked once: CPUID traps to the hypervisor in a virtual machine. */
static int cpu_has_avx512_bf16(void)
{
    unsigned int a, b, c, d;
    if (!cpu_supports(ISA_avx512)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || a < 1) return 0;  /* a: the highest subleaf of leaf 7 */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1;
}

static int cpu_supports_bf16(enum isa isa)
{
    static _Atomic int avx512_bf16 = -1;
    if (isa != ISA_avx512) return 0;
    if (atomic_load_explicit(&avx512_bf16, memory_order_relaxed) < 0) atomic_store(&avx512_bf16, cpu_has_avx512_bf16());
    return atomic_load_explicit(&avx512_bf16, memory_order_relaxed);
}

int fc_cpu_has_avx512_bf16(void) { return cpu_supports_bf16(ISA_avx512); }
#else
static int cpu_supports(enum isa isa) { return isa == ISA_generic; }
static int cpu_supports_bf16(enum isa isa) { (void)isa; return 0; }
int fc_cpu_has_avx512_bf16(void) { return 0; }
#endif

static enum isa best_isa(void)
{
    for (int i = ISA_COUNT - 1; i > ISA_generic; i--)
        if (cpu_supports((enum isa)i)) return (enum isa)i;
    return ISA_generic;
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
/* The compute precision of the calling thread's next calls (fc_set_thread_precision: a layer whose
 * dtype policy computes in bfloat16 sets it around its ops), taken into the call frame like the
 * instruction set. */
static __thread int thread_precision = FC_PRECISION_FLOAT32;
static __thread int call_precision = FC_PRECISION_FLOAT32;
static __thread int call_bf16_portable;  /* the call's snapshot of fc_set_bf16_kernel's choice */
static int use_portable_bf16(void);

void fc_call_begin(void)
{
    if (call_depth++ == 0) {
        call_isa = (int)process_isa();
        call_precision = thread_precision;
        call_bf16_portable = use_portable_bf16();
    }
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

int fc_set_thread_precision(int precision)
{
    const int before = thread_precision;
    thread_precision = precision == FC_PRECISION_BFLOAT16 ? FC_PRECISION_BFLOAT16 : FC_PRECISION_FLOAT32;
    return before;
}

static int current_precision(void) { return call_depth > 0 ? call_precision : thread_precision; }

/* Which bfloat16 kernel runs: the instruction set's where the CPU has it (else float32), or the
 * portable one on any CPU (FASTCONV_BF16_KERNEL=portable or fc_set_bf16_kernel: tests, and CPUs
 * without AVX512_BF16 that want bf16 results). Process-wide, as the instruction set. */
static _Atomic int bf16_portable = -1;

static int use_portable_bf16(void)
{
    int portable = atomic_load_explicit(&bf16_portable, memory_order_relaxed);
    if (portable < 0) {
        const char *env = getenv("FASTCONV_BF16_KERNEL");
        portable = env && strcmp(env, "portable") == 0;
        atomic_store(&bf16_portable, portable);
    }
    return portable;
}

int fc_set_bf16_kernel(const char *name)
{
    if (!name || (strcmp(name, "portable") != 0 && strcmp(name, "auto") != 0)) return -1;
    atomic_store(&bf16_portable, strcmp(name, "portable") == 0);
    return 0;
}

/* The bfloat16 kernel for a call under `isa`, or NULL where such calls run the float32 kernel. */
static const fc_gemm_kernel *bf16_kernel(enum isa isa)
{
    if (call_depth > 0 ? call_bf16_portable : use_portable_bf16()) return &portable_bf16_kernel;
    return bf16_ukernel(isa) && cpu_supports_bf16(isa) ? &bf16_kernels[isa] : NULL;
}

const char *fc_bf16_kernel_name(void)
{
    const fc_gemm_kernel *k = bf16_kernel(current_isa());
    return k ? k->uk->name : NULL;
}

const char *fc_isa_name(void) { return isa_names[current_isa()]; }

const char *fc_isa_name_at(int i) { return i >= 0 && i < ISA_COUNT ? isa_names[i] : NULL; }

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

const fc_gemm_kernel *fc_active_gemm_kernel(void)
{
    const enum isa isa = current_isa();
    const fc_gemm_kernel *bf16 = current_precision() == FC_PRECISION_BFLOAT16 ? bf16_kernel(isa) : NULL;
    return bf16 ? bf16 : &gemm_kernels[isa];
}

const fc_gemm_kernel *fc_active_float32_gemm_kernel(void) { return &gemm_kernels[current_isa()]; }

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

const char *fc_gemm_kernel_name(void) { return fc_active_gemm_kernel()->uk->name; }

#define ACTIVE_TABLE(isa, type, table, file) \
    const type *fc_active_##table(void) { return kernel_table[current_isa()].table; }
FC_PER_ISA_TABLES(ACTIVE_TABLE, _)

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
