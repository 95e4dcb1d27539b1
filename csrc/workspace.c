/* Per-thread scratch buffers (see workspace.h): a pthread key whose destructor frees a thread's
 * buffers when it exits; an atexit handler frees the main thread's. */
#include <pthread.h>
#include <stdlib.h>

#include "workspace.h"
#include "fastconv.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

typedef struct {
    float *ptr[FC_SCRATCH_SLOTS];
    int64_t floats[FC_SCRATCH_SLOTS];
} scratch_set;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void free_set(void *p)
{
    scratch_set *set = p;
    for (int i = 0; i < FC_SCRATCH_SLOTS; i++) free(set->ptr[i]);
    free(set);
}

static void free_at_exit(void)
{
    scratch_set *set = pthread_getspecific(scratch_key);
    if (set) {
        pthread_setspecific(scratch_key, NULL);
        free_set(set);
    }
}

static void make_key(void)
{
    if (pthread_key_create(&scratch_key, free_set) != 0) abort();
    atexit(free_at_exit);
}

float *fc_scratch(enum fc_scratch_slot slot, int64_t floats)
{
    pthread_once(&scratch_once, make_key);
    scratch_set *set = pthread_getspecific(scratch_key);
    if (!set) {
        set = calloc(1, sizeof *set);
        if (!set || pthread_setspecific(scratch_key, set) != 0) abort();
    }
    if (floats < 16) floats = 16;
    if (set->floats[slot] < floats) {
        free(set->ptr[slot]);
        size_t bytes = ((size_t)floats * sizeof(float) + 63) & ~(size_t)63;
        set->ptr[slot] = aligned_alloc(64, bytes);
        if (!set->ptr[slot]) abort();
        set->floats[slot] = floats;
    }
    return set->ptr[slot];
}

int fc_keep_freed_memory(int64_t bytes)
{
#ifdef __GLIBC__
    /* NumPy arrays of training activations (MBs each) are allocated and freed every step. glibc
     * serves them with fresh mmaps, or trims the freed heap, so every step page-faults them in again:
     * measured 30% of a training step. Keeping up to `bytes` on the heap reuses the pages. */
    return mallopt(M_MMAP_THRESHOLD, (int)bytes) && mallopt(M_TRIM_THRESHOLD, (int)bytes);
#else
    (void)bytes;
    return 0;
#endif
}
