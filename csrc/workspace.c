/* Scratch memory of kernel calls (see workspace.h): one set of slots per calling thread, all sets in
 * a registry so that fc_release_workspace can free those no call is using. A set's mutex is held by
 * its thread from its first fc_scratch in a call to the call's end, and taken (try-lock) by
 * fc_release_workspace to free it; the owner never waits except on a release in progress. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workspace.h"
#include "fastconv.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

enum {
    MAPPED_MIN_BYTES = 256 << 10,  /* from this size on, a buffer is its own mapping (munmap frees it) */
};

typedef struct scratch_set {
    float *ptr[FC_SCRATCH_SLOTS];
    int64_t bytes[FC_SCRATCH_SLOTS];   /* capacity as allocated (mapped: whole pages) */
    unsigned char mapped[FC_SCRATCH_SLOTS];
    pthread_mutex_t lock;              /* held by the owner during a call, by a releaser while freeing */
    int held_by_owner;                 /* read and written by the owner only */
    struct scratch_set *prev, *next;   /* the registry, under registry_lock */
} scratch_set;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static scratch_set *registry;
static pthread_key_t set_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static __thread scratch_set *own;

static _Atomic int64_t held_bytes;  /* in every set's buffers */
static _Atomic int64_t peak_bytes;  /* the most held_bytes has been since the last reset */
static _Atomic int64_t limit_bytes = FC_WORKSPACE_DEFAULT_LIMIT;
static _Atomic int64_t fail_from_bytes = -1;  /* tests: requests of at least this many bytes fail */
static __thread int64_t requested[FC_SCRATCH_SLOTS];  /* tests: this thread's largest request per slot */
_Static_assert(FC_SCRATCH_SLOTS == 3, "fc_scratch_requested reports three slots");

static void count(int64_t delta)
{
    const int64_t now = atomic_fetch_add(&held_bytes, delta) + delta;
    int64_t peak = atomic_load(&peak_bytes);
    while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
    }
}

static void free_slot(scratch_set *set, int slot)
{
    if (!set->ptr[slot]) return;
    if (set->mapped[slot])
        munmap(set->ptr[slot], (size_t)set->bytes[slot]);
    else
        free(set->ptr[slot]);
    count(-set->bytes[slot]);
    set->ptr[slot] = NULL;
    set->bytes[slot] = 0;
    set->mapped[slot] = 0;
}

static void free_slots(scratch_set *set)
{
    for (int i = 0; i < FC_SCRATCH_SLOTS; i++) free_slot(set, i);
}

static void unregister_and_free(void *p)
{
    scratch_set *set = p;
    pthread_mutex_lock(&registry_lock);
    if (set->prev) set->prev->next = set->next; else registry = set->next;
    if (set->next) set->next->prev = set->prev;
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_lock(&set->lock);  /* a release in progress finishes first */
    free_slots(set);
    pthread_mutex_unlock(&set->lock);
    pthread_mutex_destroy(&set->lock);
    free(set);
}

static void free_main_thread_set(void)
{
    scratch_set *set = own;
    if (set) {
        own = NULL;
        pthread_setspecific(set_key, NULL);
        unregister_and_free(set);
    }
}

static void make_key(void)
{
    /* Without a key the sets of exiting threads would leak; still usable. */
    if (pthread_key_create(&set_key, unregister_and_free) == 0) atexit(free_main_thread_set);
}

static scratch_set *own_set(void)
{
    if (own) return own;
    pthread_once(&key_once, make_key);
    scratch_set *set = calloc(1, sizeof *set);
    if (!set) return NULL;
    pthread_mutex_init(&set->lock, NULL);
    pthread_setspecific(set_key, set);
    pthread_mutex_lock(&registry_lock);
    set->next = registry;
    if (registry) registry->prev = set;
    registry = set;
    pthread_mutex_unlock(&registry_lock);
    own = set;
    return set;
}

float *fc_scratch(enum fc_scratch_slot slot, int64_t floats)
{
    scratch_set *set = own_set();
    if (!set) return NULL;
    if (!set->held_by_owner) {
        pthread_mutex_lock(&set->lock);
        set->held_by_owner = 1;
    }
    if (floats < 16) floats = 16;
    if (floats > (INT64_MAX >> 3)) return NULL;  /* no machine has that; keeps the byte count in range */
    const int64_t bytes = (floats * (int64_t)sizeof(float) + 63) & ~(int64_t)63;
    if (bytes > requested[slot]) requested[slot] = bytes;
    const int64_t fail_from = atomic_load_explicit(&fail_from_bytes, memory_order_relaxed);
    if (fail_from >= 0 && bytes >= fail_from) return NULL;
    if (set->bytes[slot] >= bytes) return set->ptr[slot];
    free_slot(set, slot);
    void *p = NULL;
    int64_t size = bytes;
    if (bytes >= MAPPED_MIN_BYTES) {
        const int64_t page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
        size = (bytes + page - 1) / page * page;
        p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        set->mapped[slot] = 1;
    } else {
        p = aligned_alloc(64, (size_t)bytes);
        if (!p) return NULL;
    }
    set->ptr[slot] = p;
    set->bytes[slot] = size;
    count(size);
    return set->ptr[slot];
}

void fc_workspace_call_end(void)
{
    scratch_set *set = own;
    if (!set || !set->held_by_owner) return;
    if (atomic_load(&held_bytes) > atomic_load(&limit_bytes)) free_slots(set);
    set->held_by_owner = 0;
    pthread_mutex_unlock(&set->lock);
}

int64_t fc_release_workspace(void)
{
    int64_t released = 0;
    pthread_mutex_lock(&registry_lock);
    for (scratch_set *set = registry; set; set = set->next) {
        if (set == own && set->held_by_owner) continue;  /* called from inside a call: never */
        if (pthread_mutex_trylock(&set->lock) != 0) continue;  /* a call is using it */
        for (int i = 0; i < FC_SCRATCH_SLOTS; i++) released += set->bytes[i];
        free_slots(set);
        pthread_mutex_unlock(&set->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    return released;
}

void fc_workspace_stats(int64_t out[3])
{
    out[0] = atomic_load(&held_bytes);
    out[1] = atomic_load(&peak_bytes);
    out[2] = atomic_load(&limit_bytes);
}

void fc_reset_workspace_peak(void) { atomic_store(&peak_bytes, atomic_load(&held_bytes)); }

void fc_set_workspace_limit(int64_t bytes) { atomic_store(&limit_bytes, bytes < 0 ? 0 : bytes); }

void fc_fail_scratch_from(int64_t bytes) { atomic_store(&fail_from_bytes, bytes); }

void fc_scratch_requested(int64_t out[3])
{
    for (int i = 0; i < FC_SCRATCH_SLOTS; i++) out[i] = requested[i], requested[i] = 0;
}

void fc_workspace_before_fork(void) { pthread_mutex_lock(&registry_lock); }

void fc_workspace_after_fork(int child)
{
    (void)child;  /* the forking thread took the lock, and is the child's only thread: it may unlock */
    pthread_mutex_unlock(&registry_lock);
}

int fc_keep_freed_memory(int64_t bytes)
{
#ifdef __GLIBC__
    /* NumPy arrays of training activations (MBs each) are allocated and freed every step. glibc
     * serves them with fresh mmaps, or trims the freed heap, so every step page-faults them in again;
     * keeping up to `bytes` on the heap reuses the pages. */
    return mallopt(M_MMAP_THRESHOLD, (int)bytes) && mallopt(M_TRIM_THRESHOLD, (int)bytes);
#else
    (void)bytes;
    return 0;
#endif
}
