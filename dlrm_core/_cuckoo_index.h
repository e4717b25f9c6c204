/* The cuckoo hash index of dlrm_core/hash_index.py, shared by the kernels that read or change it
(_serving_kernel.c: build, lookups, assign; _admission_kernel.c: the trainer's admission pass).

2**bits buckets of BUCKET slots, each bucket its BUCKET keys then their (1 + row)s (one 64-byte
line for int32 keys); every key sits in one of its two buckets, chosen by multiplicative hashes.
Everything here is static: each kernel compiles its own copy.
*/
#ifndef CUCKOO_INDEX_H
#define CUCKOO_INDEX_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define INDEX_PREFETCH 16 /* lookups prefetch the buckets of the key this many ahead */
#define BUCKET 8 /* slots per bucket: 8 int32 keys and their rows fill one 64-byte line */
#define MAX_KICKS 500
/* 4 int32 keys or rows: a bucket's 8 int32 keys are compared in two vector ops */
typedef int32_t quads __attribute__((vector_size(16), aligned(4), may_alias));

typedef struct {
    void *slots; /* (2**bits, 2, BUCKET) int32 or int64: keys, then 1 + rows; (-1, 0) if empty */
    int bits;    /* 2**bits buckets */
    int width;   /* 32 or 64: the keys' dtype */
    uint64_t mult[2];
} Index;

/* The lookup's helpers take the key width as a separate argument: resolve() calls them with a
   constant, so each width gets its own straight-line (vectorised) code. */
#define INLINE static inline __attribute__((always_inline))
/* a kernel that includes this header may not call every function */
#define INDEX_FN static __attribute__((unused))

/* Bucket `choice` (0 or 1) of a key: the top bits of key * mult[choice] modulo 2**width. */
INLINE uint64_t bucket_of(const Index *ix, int width, int choice, uint64_t key) {
    if (width == 32)
        return (uint32_t)((uint32_t)key * (uint32_t)ix->mult[choice]) >> (32 - ix->bits);
    return (key * ix->mult[choice]) >> (64 - ix->bits);
}

INLINE int in_key_range(int width, int64_t key) {
    return key >= 0 && (width == 64 || key <= INT32_MAX);
}

INLINE void prefetch_bucket(const Index *ix, int width, int choice, int64_t key) {
    const char *at = (const char *)ix->slots +
                     bucket_of(ix, width, choice, (uint64_t)key) * BUCKET * 2 * (width / 8);
    __builtin_prefetch(at);
    if (width == 64) /* two cache lines */
        __builtin_prefetch(at + 64);
}

/* 1 + the row of key in its bucket `choice`, 0 if it is not there (empty slots hold key -1).
   All slots are compared and masked, without branches: at most one matches, and a branch on
   where would be mispredicted on nearly every lookup. */
INLINE int32_t find_in(const Index *ix, int width, int choice, int64_t key) {
    uint64_t first = bucket_of(ix, width, choice, (uint64_t)key) * BUCKET;
    int32_t row = 0;
    if (width == 32) {
        const quads *keys = (const quads *)((const int32_t *)ix->slots + 2 * first);
        const quads *rows = keys + BUCKET / 4;
        quads want = (quads){0, 0, 0, 0} + (int32_t)key;
        quads hit = ((keys[0] == want) & rows[0]) | ((keys[1] == want) & rows[1]);
        return hit[0] | hit[1] | hit[2] | hit[3];
    }
    const int64_t *keys = (const int64_t *)ix->slots + 2 * first, *rows = keys + BUCKET;
    for (int j = 0; j < BUCKET; j++)
        row |= (int32_t)rows[j] & -(int32_t)(keys[j] == key);
    return row;
}

/* rows[i] = 1 + the row of ids[i] + shift, 0 if not indexed. First every key's first bucket,
   which holds nearly all keys, then the second bucket of the keys not found there (the ids
   that are not active, mostly): each pass prefetches the buckets of the ids INDEX_PREFETCH ahead, so
   their cache misses overlap. `pending` has room for n. With `a`, each row of A found is
   prefetched at once: by the time the bags are summed, the table's rows are in cache. */
INLINE void resolve_width(const Index *ix, int width, const int64_t *ids, Py_ssize_t n,
                          int64_t shift, int32_t *rows, Py_ssize_t *pending, const float *a,
                          int rank) {
    Py_ssize_t misses = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + INDEX_PREFETCH < n)
            prefetch_bucket(ix, width, 0, ids[i + INDEX_PREFETCH] + shift);
        int64_t key = ids[i] + shift;
        int valid = in_key_range(width, key);
        rows[i] = valid ? find_in(ix, width, 0, key) : 0;
        if (a && rows[i])
            __builtin_prefetch(a + (size_t)rows[i] * rank);
        pending[misses] = i;
        misses += valid && !rows[i];
    }
    for (Py_ssize_t j = 0; j < misses; j++) {
        if (j + INDEX_PREFETCH < misses)
            prefetch_bucket(ix, width, 1, ids[pending[j + INDEX_PREFETCH]] + shift);
        int32_t row = find_in(ix, width, 1, ids[pending[j]] + shift);
        if (a && row)
            __builtin_prefetch(a + (size_t)row * rank);
        rows[pending[j]] = row;
    }
}

INDEX_FN void resolve(const Index *ix, const int64_t *ids, Py_ssize_t n, int64_t shift,
                    int32_t *rows, Py_ssize_t *pending, const float *a, int rank) {
    if (ix->width == 32)
        resolve_width(ix, 32, ids, n, shift, rows, pending, a, rank);
    else
        resolve_width(ix, 64, ids, n, shift, rows, pending, a, rank);
}

/* Where slot number `slot` (bucket * BUCKET + j) keeps its key: a bucket holds its BUCKET keys,
   then their BUCKET rows, so a lookup compares keys that sit side by side. */
static inline uint64_t key_at(uint64_t slot) { return slot + (slot & ~(uint64_t)(BUCKET - 1)); }

static inline int64_t slot_key(const Index *ix, uint64_t slot) {
    uint64_t at = key_at(slot);
    return ix->width == 32 ? ((int32_t *)ix->slots)[at] : ((int64_t *)ix->slots)[at];
}

static inline int64_t slot_row(const Index *ix, uint64_t slot) {
    uint64_t at = key_at(slot) + BUCKET;
    return ix->width == 32 ? ((int32_t *)ix->slots)[at] : ((int64_t *)ix->slots)[at];
}

static inline void set_slot(Index *ix, uint64_t slot, int64_t key, int64_t row) {
    uint64_t at = key_at(slot);
    if (ix->width == 32) {
        ((int32_t *)ix->slots)[at] = (int32_t)key;
        ((int32_t *)ix->slots)[at + BUCKET] = (int32_t)row;
    } else {
        ((int64_t *)ix->slots)[at] = key;
        ((int64_t *)ix->slots)[at + BUCKET] = row;
    }
}

/* A free slot of the bucket, or -1. */
static inline int64_t free_slot(const Index *ix, uint64_t bucket) {
    for (int j = 0; j < BUCKET; j++)
        if (slot_key(ix, bucket * BUCKET + (uint64_t)j) < 0)
            return (int64_t)(bucket * BUCKET + (uint64_t)j);
    return -1;
}

/* The slot of key in either of its buckets, or -1. */
INDEX_FN int64_t find_slot(const Index *ix, int64_t key) {
    for (int choice = 0; choice < 2; choice++) {
        uint64_t bucket = bucket_of(ix, ix->width, choice, (uint64_t)key);
        for (int j = 0; j < BUCKET; j++)
            if (slot_key(ix, bucket * BUCKET + (uint64_t)j) == key)
                return (int64_t)(bucket * BUCKET + (uint64_t)j);
    }
    return -1;
}

/* Put a key that is not indexed into its second bucket, evicting a random occupant to its
   other bucket when full (cuckoo), at most MAX_KICKS moves. 0 when the last occupant moved out
   found no room: that key is no longer indexed, and the caller rebuilds the whole index. */
INDEX_FN int kick_in(Index *ix, int64_t key, int64_t row, uint64_t *random) {
    uint64_t bucket = bucket_of(ix, ix->width, 1, (uint64_t)key);
    for (int kick = 0; kick < MAX_KICKS; kick++) {
        int64_t slot = free_slot(ix, bucket);
        if (slot >= 0) {
            set_slot(ix, (uint64_t)slot, key, row);
            return 1;
        }
        *random ^= *random << 13, *random ^= *random >> 7, *random ^= *random << 17;
        uint64_t victim = bucket * BUCKET + *random % BUCKET;
        int64_t victim_key = slot_key(ix, victim);
        int64_t victim_row = slot_row(ix, victim);
        set_slot(ix, victim, key, row);
        key = victim_key, row = victim_row;
        uint64_t first = bucket_of(ix, ix->width, 0, (uint64_t)key);
        bucket = first == bucket ? bucket_of(ix, ix->width, 1, (uint64_t)key) : first;
    }
    return 0;
}

/* Place n unique keys >= 0 (row i + 1 for keys[i]). First pass: every key into its first
   bucket while it has room. Second: the rest through kick_in. 0 when a key could not be
   placed: the caller retries with twice the buckets. */
INDEX_FN int place(Index *ix, const void *keys, Py_ssize_t n) {
    uint64_t slots = (uint64_t)BUCKET << ix->bits;
    for (uint64_t slot = 0; slot < slots; slot++)
        set_slot(ix, slot, -1, 0);
    Py_ssize_t *later = malloc(sizeof(*later) * (size_t)(n ? n : 1));
    if (!later)
        return -1;
    Py_ssize_t waiting = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t key = ix->width == 32 ? ((const int32_t *)keys)[i] : ((const int64_t *)keys)[i];
        int64_t slot = free_slot(ix, bucket_of(ix, ix->width, 0, (uint64_t)key));
        if (slot >= 0)
            set_slot(ix, (uint64_t)slot, key, i + 1);
        else
            later[waiting++] = i;
    }
    uint64_t random = 0x9E3779B97F4A7C15u; /* xorshift64: deterministic builds */
    int placed = 1;
    for (Py_ssize_t w = 0; w < waiting && placed; w++) {
        Py_ssize_t i = later[w];
        int64_t key = ix->width == 32 ? ((const int32_t *)keys)[i] : ((const int64_t *)keys)[i];
        placed = kick_in(ix, key, i + 1, &random);
    }
    free(later);
    return placed;
}

/* keys[i] -> rows[i] + 1 for n keys (int64, unique, in the index's key range): a key already
   indexed gets its new row, a new one its first bucket's free slot, else kick_in. Returns how
   many keys were done before one could not be placed (n when all were). */
INDEX_FN Py_ssize_t assign(Index *ix, const int64_t *keys, const int64_t *rows, Py_ssize_t n) {
    uint64_t random = 0x9E3779B97F4A7C15u;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t slot = find_slot(ix, keys[i]);
        if (slot < 0)
            slot = free_slot(ix, bucket_of(ix, ix->width, 0, (uint64_t)keys[i]));
        if (slot >= 0)
            set_slot(ix, (uint64_t)slot, keys[i], rows[i] + 1);
        else if (!kick_in(ix, keys[i], rows[i] + 1, &random))
            return i;
    }
    return n;
}

/* Empty the slots of n keys (int64); keys not indexed are skipped. Returns how many were. */
INDEX_FN Py_ssize_t unassign(Index *ix, const int64_t *keys, Py_ssize_t n) {
    Py_ssize_t removed = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t slot = find_slot(ix, keys[i]);
        if (slot >= 0) {
            set_slot(ix, (uint64_t)slot, -1, 0);
            removed++;
        }
    }
    return removed;
}

INDEX_FN int parse_index(PyObject *spec, Index *ix) {
    /* (slots pointer, bits, width, (m0, m1)) */
    PyObject *slots;
    long long m0, m1;
    if (!PyArg_ParseTuple(spec, "Oii(LL)", &slots, &ix->bits, &ix->width, &m0, &m1))
        return -1;
    ix->slots = PyLong_AsVoidPtr(slots);
    if (PyErr_Occurred())
        return -1;
    if ((ix->width != 32 && ix->width != 64) || ix->bits < 1 || ix->bits >= ix->width) {
        PyErr_SetString(PyExc_ValueError, "index: width must be 32 or 64 and 1 <= bits < width");
        return -1;
    }
    ix->mult[0] = (uint64_t)m0;
    ix->mult[1] = (uint64_t)m1;
    return 0;
}

#endif
