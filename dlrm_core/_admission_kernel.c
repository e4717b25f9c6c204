/* The LiveTrainer's admission pass, for dlrm_core.group_layout.LiveGroups, and the second-sighting
sketch of dlrm_core.admission.SightingSketch.

admit, one call per step for all the trainer's tables: for each table, over the batch's distinct
keys of that table (sorted; id = key - the table's key offset),
  1. looks every id up in the table's cuckoo index (_cuckoo_index.h) and stamps the active ones'
     last use with the step's time;
  2. sights the new ids in the table's count-min sketch (if it has one): those sighted
     admit_after times recently pass;
  3. when more pass than the table's free rows hold, keeps the ones seen most often in the batch
     (ties: the smaller id) and counts the rest as refused;
  4. appends the kept ones, in id order, to the table's active rows (A's row and the Adagrad
     accumulator 0, last use the step's time) and indexes them;
  5. writes each key's row in the trainer's buffers and whether it is active, for the forward.
With lookups_only, only 1 (without the stamps) and 5. The same, table by table with torch ops,
cost ~25 ops per table and step (~2.8 ms a step of the Criteo reference's 17 tables).

sight: step 2 alone, for the per-table path (RankController.passes).

evict: LiveEmbedding.evict's compaction and index updates in one call (there ~20 small torch
ops, ~0.1 ms for a handful of rows); the fold of the evicted rows' deltas stays in torch (its
matrix product's bits are BLAS's).

lru: RankController's pick of the least recently used rows for make_room: each row's age, the
rows of the batch's ids protected through the index, the oldest `count` by a heap (ties: the
higher row first), where ~10 torch ops with topk cost ~0.25 ms a pick at ~500 rows.

batch_keys, argsort: a batch's ids of all tables at once as keys of one key space, their distinct
keys (as torch.unique with inverse and counts), the bags' starts and each table's first key (what
admit and the training kernel take: one call, where cat, repeat_interleave, stack, unique and
searchsorted were eight torch ops), and a table's ids in order for its snapshots (as
torch.sort), by an LSD radix sort: torch's compare sorts cost 1.5-4.5x more on these sizes
(5k-92k keys).

The sketch (see admission.py): DEPTH rows of 2**bits one-byte counters; an id's estimate is its
smallest counter plus its count in the call (saturating at MAX_COUNT); conservative update
raises each of its counters to that estimate, all estimates of a call taken before any update
(as torch's gather, then scatter_reduce amax); after 2**bits / 2 sightings all counters halve.

The GIL is released while they run. The Python side validates dtypes, shapes and contiguity and
passes data pointers; this checks every key, row and count against the sizes it is given before
changing anything.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cuckoo_index.h"

#define DEPTH 2
#define MAX_COUNT 15
#define MAX_RANK 1024

typedef struct {
    uint8_t *counters;    /* (DEPTH, 2**bits) */
    int64_t *since_reset; /* sightings since the last halving: one int64 */
    int bits;
    uint64_t mult[DEPTH];
} Sketch;

/* One table: its index, its sketch (counters NULL: none), its region of the trainer's buffers
   (capacity rows from `start`, the first n_active of them active) and this step's time. */
typedef struct {
    Index index;
    Sketch sketch;
    int64_t admit_after;
    int64_t *keys;
    float *a, *last_used, *accum;
    int rank;
    int64_t start, capacity, n_active, key_offset, num_rows;
    float stamp;
} Table;

/* Scratch for one table's keys, sized for the most keys of any table in the call. */
typedef struct {
    int64_t *ids, *counts, *estimate;
    Py_ssize_t *pending, *fresh;
    uint64_t *buckets; /* (DEPTH, keys) */
    int32_t *rows;
} Scratch;

static void sight(const Sketch *sk, const int64_t *ids, const int64_t *counts, Py_ssize_t k,
                  int64_t *estimate, uint64_t *buckets) {
    if (k == 0)
        return;
    uint64_t width = (uint64_t)1 << sk->bits;
    for (Py_ssize_t i = 0; i < k; i++) {
        int64_t least = MAX_COUNT;
        for (int d = 0; d < DEPTH; d++) {
            uint64_t b = ((uint64_t)ids[i] * sk->mult[d]) >> (64 - sk->bits);
            buckets[d * k + i] = b;
            int64_t c = sk->counters[d * width + b];
            least = c < least ? c : least;
        }
        estimate[i] = counts[i] >= MAX_COUNT - least ? MAX_COUNT : least + counts[i];
    }
    for (int d = 0; d < DEPTH; d++)
        for (Py_ssize_t i = 0; i < k; i++) {
            uint8_t *c = &sk->counters[d * width + buckets[d * k + i]];
            if (*c < estimate[i])
                *c = (uint8_t)estimate[i];
        }
    *sk->since_reset += k;
    if (*sk->since_reset >= (int64_t)(width / 2)) {
        for (uint64_t j = 0; j < DEPTH * width; j++)
            sk->counters[j] >>= 1;
        *sk->since_reset = 0;
    }
}

static int by_count_descending(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a < b) - (a > b);
}

/* Keep `room` of the k candidates (fresh[i], counts[i]): the most frequent, ties to the earlier
   (smaller id), as a stable descending argsort would; fresh keeps them in their order. Returns
   how many were kept. `sorted` has room for k. */
static Py_ssize_t keep_most_frequent(Py_ssize_t *fresh, int64_t *counts, Py_ssize_t k,
                                     Py_ssize_t room, int64_t *sorted) {
    if (k <= room)
        return k;
    if (room == 0)
        return 0;
    memcpy(sorted, counts, sizeof(*sorted) * (size_t)k);
    qsort(sorted, (size_t)k, sizeof(*sorted), by_count_descending);
    int64_t least = sorted[room - 1]; /* the smallest count kept */
    Py_ssize_t above = 0, kept = 0;
    for (Py_ssize_t i = 0; i < k; i++)
        above += counts[i] > least;
    Py_ssize_t ties = room - above; /* the first `ties` candidates counted `least` stay */
    for (Py_ssize_t i = 0; i < k; i++)
        if (counts[i] > least || (counts[i] == least && ties-- > 0)) {
            fresh[kept] = fresh[i];
            counts[kept++] = counts[i];
        }
    return kept;
}

/* The kept new ids as active rows n_active.. of the table: index them, fill their state. Returns
   0 when the index found no room for one (it then misses some key: the caller rebuilds it). */
static int append(Table *t, const Py_ssize_t *fresh, Py_ssize_t kept, const int64_t *ids,
                  int64_t *pos, uint8_t *hit) {
    int indexed = 1;
    for (Py_ssize_t j = 0; j < kept; j++) {
        int64_t row = t->n_active + j, id = ids[fresh[j]];
        t->keys[row] = id;
        memset(t->a + (size_t)row * t->rank, 0, sizeof(float) * (size_t)t->rank);
        t->last_used[row] = t->stamp;
        t->accum[row] = 0.0f;
        indexed = indexed && assign(&t->index, &id, &row, 1) == 1;
        pos[fresh[j]] = t->start + row;
        hit[fresh[j]] = 1;
    }
    return indexed;
}

/* One table's keys (n of them, from `keys`, their batch counts, their pos and hit out). Writes
   (admitted, refused, indexed) into status. */
static void admit_table(Table *t, const int64_t *keys, const int64_t *counts, Py_ssize_t n,
                        int64_t *pos, uint8_t *hit, int lookups_only, Scratch *s,
                        int64_t *status) {
    status[0] = status[1] = 0, status[2] = 1;
    for (Py_ssize_t i = 0; i < n; i++)
        s->ids[i] = keys[i] - t->key_offset;
    resolve(&t->index, s->ids, n, 0, s->rows, s->pending, NULL, 0);
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t row = s->rows[i];
        hit[i] = row > 0;
        pos[i] = t->start + (row > 0 ? row - 1 : 0);
        if (row > 0 && !lookups_only)
            t->last_used[row - 1] = t->stamp;
        else if (row == 0) {
            s->fresh[k] = i;
            s->counts[k++] = counts[i];
        }
    }
    if (lookups_only || k == 0)
        return;
    if (t->sketch.counters) {
        int64_t *new_ids = (int64_t *)s->buckets + DEPTH * k; /* after the k buckets a row */
        for (Py_ssize_t j = 0; j < k; j++)
            new_ids[j] = s->ids[s->fresh[j]];
        sight(&t->sketch, new_ids, s->counts, k, s->estimate, s->buckets);
        Py_ssize_t passed = 0;
        for (Py_ssize_t j = 0; j < k; j++)
            if (s->estimate[j] >= t->admit_after) {
                s->fresh[passed] = s->fresh[j];
                s->counts[passed++] = s->counts[j];
            }
        k = passed;
    }
    Py_ssize_t kept = keep_most_frequent(s->fresh, s->counts, k, t->capacity - t->n_active,
                                         s->estimate);
    status[0] = kept, status[1] = k - kept;
    status[2] = append(t, s->fresh, kept, s->ids, pos, hit);
}

static int parse_sketch(PyObject *spec, Sketch *sk) {
    /* None, or (counters pointer, bits, since_reset pointer, (m0, m1)) */
    memset(sk, 0, sizeof(*sk));
    if (spec == Py_None)
        return 0;
    PyObject *counters, *since_reset;
    long long m0, m1;
    if (!PyArg_ParseTuple(spec, "OiO(LL)", &counters, &sk->bits, &since_reset, &m0, &m1))
        return -1;
    sk->counters = PyLong_AsVoidPtr(counters);
    sk->since_reset = PyLong_AsVoidPtr(since_reset);
    if (PyErr_Occurred())
        return -1;
    if (sk->bits < 1 || sk->bits > 40 || !sk->counters || !sk->since_reset) {
        PyErr_SetString(PyExc_ValueError, "sketch: bits must be in [1, 40], pointers non-null");
        return -1;
    }
    sk->mult[0] = (uint64_t)m0, sk->mult[1] = (uint64_t)m1;
    return 0;
}

static int parse_table(PyObject *spec, Table *t) {
    /* ((keys, a, last_used, accum pointers, rank, start, capacity, key_offset, num_rows),
        index, sketch, admit_after, n_active, stamp) */
    PyObject *region, *index, *sketch, *keys, *a, *last_used, *accum;
    long long admit_after, n_active, start, capacity, key_offset, num_rows;
    double stamp;
    if (!PyArg_ParseTuple(spec, "O!O!OLLd", &PyTuple_Type, &region, &PyTuple_Type, &index,
                          &sketch, &admit_after, &n_active, &stamp) ||
        !PyArg_ParseTuple(region, "OOOOiLLLL", &keys, &a, &last_used, &accum, &t->rank, &start,
                          &capacity, &key_offset, &num_rows) ||
        parse_index(index, &t->index) < 0 || parse_sketch(sketch, &t->sketch) < 0)
        return -1;
    t->keys = PyLong_AsVoidPtr(keys);
    t->a = PyLong_AsVoidPtr(a);
    t->last_used = PyLong_AsVoidPtr(last_used);
    t->accum = PyLong_AsVoidPtr(accum);
    if (PyErr_Occurred())
        return -1;
    t->admit_after = admit_after, t->n_active = n_active, t->start = start;
    t->capacity = capacity, t->key_offset = key_offset, t->num_rows = num_rows;
    t->stamp = (float)stamp;
    int64_t most = t->index.width == 32 ? INT32_MAX : INT64_MAX;
    if (t->rank < 1 || t->rank > MAX_RANK || start < 0 || n_active < 0 ||
        n_active > capacity || num_rows < 0 || num_rows > most || key_offset < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "admit: a table's rank, start, rows or sizes are out of range");
        return -1;
    }
    return 0;
}

/* 0 when the bounds split [0, n_keys) in order and every key is an id of its table. */
static int keys_in_range(const Table *tables, Py_ssize_t count, const int64_t *keys,
                         const int64_t *counts, const int64_t *bounds, Py_ssize_t n_keys) {
    if (bounds[0] != 0 || bounds[count] != n_keys)
        return -1;
    for (Py_ssize_t m = 0; m < count; m++) {
        if (bounds[m + 1] < bounds[m])
            return -1;
        for (Py_ssize_t u = bounds[m]; u < bounds[m + 1]; u++)
            if (keys[u] < tables[m].key_offset ||
                keys[u] - tables[m].key_offset >= tables[m].num_rows || counts[u] < 0)
                return -1;
    }
    return 0;
}

static int run_admit(Table *tables, Py_ssize_t count, const int64_t *keys, const int64_t *counts,
                     const int64_t *bounds, int64_t *pos, uint8_t *hit, int lookups_only,
                     int64_t *status) {
    Py_ssize_t most = 1;
    for (Py_ssize_t m = 0; m < count; m++)
        most = bounds[m + 1] - bounds[m] > most ? bounds[m + 1] - bounds[m] : most;
    size_t n = (size_t)most;
    /* ids, counts, estimate; pending, fresh; buckets (DEPTH rows) and the new ids; rows */
    char *block = malloc(n * (3 * sizeof(int64_t) + 2 * sizeof(Py_ssize_t) +
                              (DEPTH + 1) * sizeof(uint64_t) + sizeof(int32_t)));
    if (!block)
        return -1;
    Scratch s = {.ids = (int64_t *)block};
    s.counts = s.ids + n, s.estimate = s.counts + n;
    s.pending = (Py_ssize_t *)(s.estimate + n), s.fresh = s.pending + n;
    s.buckets = (uint64_t *)(s.fresh + n);
    s.rows = (int32_t *)(s.buckets + (DEPTH + 1) * n);
    for (Py_ssize_t m = 0; m < count; m++) {
        Py_ssize_t k0 = bounds[m], k1 = bounds[m + 1];
        admit_table(&tables[m], keys + k0, counts + k0, k1 - k0, pos + k0, hit + k0,
                    lookups_only, &s, status + 3 * m);
    }
    free(block);
    return 0;
}

#define RADIX_BITS 11 /* a pass of the radix sort: 2048 buckets */

/* Sort n >= 1 keys with their positions: LSD radix sort of key - min, RADIX_BITS a pass (three
   passes for the 34M keys of the Criteo reference's trained tables). On return sorted[i] (key -
   min) and at[i] (its position in keys) in order; tmp_sorted, tmp_at are scratch of n each. */
static void radix_sort(const int64_t *keys, Py_ssize_t n, uint64_t *sorted, int64_t *at,
                       uint64_t *tmp_sorted, int64_t *tmp_at, int64_t *least) {
    int64_t lo = keys[0], hi = keys[0];
    for (Py_ssize_t i = 1; i < n; i++) {
        lo = keys[i] < lo ? keys[i] : lo;
        hi = keys[i] > hi ? keys[i] : hi;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        sorted[i] = (uint64_t)keys[i] - (uint64_t)lo;
        at[i] = i;
    }
    uint64_t range = (uint64_t)hi - (uint64_t)lo;
    int bits = range ? 64 - __builtin_clzll(range) : 0, swapped = 0;
    Py_ssize_t count[1 << RADIX_BITS];
    for (int shift = 0; shift < bits; shift += RADIX_BITS) {
        memset(count, 0, sizeof(count));
        for (Py_ssize_t i = 0; i < n; i++)
            count[(sorted[i] >> shift) & ((1 << RADIX_BITS) - 1)]++;
        Py_ssize_t start = 0;
        for (int d = 0; d < 1 << RADIX_BITS; d++) {
            Py_ssize_t c = count[d];
            count[d] = start;
            start += c;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t to = count[(sorted[i] >> shift) & ((1 << RADIX_BITS) - 1)]++;
            tmp_sorted[to] = sorted[i];
            tmp_at[to] = at[i];
        }
        uint64_t *s = sorted;
        int64_t *a = at;
        sorted = tmp_sorted, at = tmp_at, tmp_sorted = s, tmp_at = a;
        swapped ^= 1;
    }
    if (swapped) { /* the result is in the callers' scratch: copy it back */
        memcpy(tmp_sorted, sorted, sizeof(*sorted) * (size_t)n);
        memcpy(tmp_at, at, sizeof(*at) * (size_t)n);
    }
    *least = lo;
}

/* As torch.unique(keys, return_inverse=True, return_counts=True): the U distinct keys sorted
   into uniq, each key's place among them into inverse, their occurrences into counts. */
static Py_ssize_t distinct_keys(const int64_t *keys, Py_ssize_t n, int64_t *uniq,
                                int64_t *inverse, int64_t *counts, char *scratch) {
    uint64_t *sorted = (uint64_t *)scratch, *tmp_sorted = sorted + n;
    int64_t *at = (int64_t *)(tmp_sorted + n), *tmp_at = at + n, lo;
    radix_sort(keys, n, sorted, at, tmp_sorted, tmp_at, &lo);
    Py_ssize_t u = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (j == 0 || sorted[j] != sorted[j - 1]) {
            uniq[u] = (int64_t)(sorted[j] + (uint64_t)lo);
            counts[u++] = 0;
        }
        counts[u - 1]++;
        inverse[at[j]] = u - 1;
    }
    return u;
}

/* keys' sorted order: sorted (n,) the keys in order, order (n,) their positions in keys. */
static void sort_keys(const int64_t *keys, Py_ssize_t n, int64_t *sorted, int64_t *order,
                      char *scratch) {
    uint64_t *by = (uint64_t *)scratch, *tmp_by = by + n;
    int64_t *tmp_order = (int64_t *)(tmp_by + n), lo;
    radix_sort(keys, n, by, order, tmp_by, tmp_order, &lo);
    for (Py_ssize_t j = 0; j < n; j++)
        sorted[j] = (int64_t)(by[j] + (uint64_t)lo);
}

typedef struct {
    const int64_t *values, *offsets;
    Py_ssize_t nnz;
    int64_t key_offset, num_rows;
} Member;

/* The members' values as keys (value + key_offset) into keys, and their bags' starts among them
   into offsets (members * batch); -1 if a value is outside its member's rows, else its index. */
static Py_ssize_t fuse_members(const Member *members, Py_ssize_t count, int batch, int64_t *keys,
                               int64_t *offsets) {
    Py_ssize_t start = 0;
    for (Py_ssize_t m = 0; m < count; m++) {
        const Member *t = &members[m];
        for (Py_ssize_t v = 0; v < t->nnz; v++) {
            if ((uint64_t)t->values[v] >= (uint64_t)t->num_rows)
                return m;
            keys[start + v] = t->values[v] + t->key_offset;
        }
        for (int i = 0; i < batch; i++)
            offsets[m * batch + i] = t->offsets[i] + start;
        start += t->nnz;
    }
    return -1;
}

static int parse_members(PyObject *specs, Member *members, Py_ssize_t count, Py_ssize_t *n) {
    int64_t next_key = 0;
    *n = 0;
    for (Py_ssize_t m = 0; m < count; m++) {
        Member *t = &members[m];
        PyObject *values, *offsets;
        long long key_offset, num_rows;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs, m), "OnOLL", &values, &t->nnz, &offsets,
                              &key_offset, &num_rows))
            return -1;
        t->values = PyLong_AsVoidPtr(values);
        t->offsets = PyLong_AsVoidPtr(offsets);
        t->key_offset = key_offset, t->num_rows = num_rows;
        if (PyErr_Occurred())
            return -1;
        if (t->nnz < 0 || num_rows < 0 || key_offset < next_key ||
            num_rows > INT64_MAX / 2 - key_offset) {
            PyErr_SetString(PyExc_ValueError,
                             "members: nnz, rows >= 0, key ranges ascending and disjoint");
            return -1;
        }
        next_key = key_offset + num_rows;
        *n += t->nnz;
    }
    return 0;
}

PyDoc_STRVAR(batch_keys_doc,
             "batch_keys(members, batch, uniq_ptr, inverse_ptr, counts_ptr, offsets_ptr,\n"
             "           bounds_ptr) -> int\n\n"
             "members: for member m, (values_ptr, nnz, offsets_ptr, key_offset, num_rows): its\n"
             "nnz ids (int64, each in [0, num_rows)) and its batch bag starts (int64), its ids\n"
             "keys from key_offset (the members' key ranges ascending, disjoint). Writes the U\n"
             "distinct keys of all members, sorted, to uniq and their occurrences to counts (room\n"
             "for n, all values), each value's index among them to inverse (n,), the bags' starts\n"
             "among all values (member after member) to offsets (members * batch) and member m's\n"
             "first key in uniq to bounds[m] (members + 1; bounds[members] = U); returns U. The\n"
             "distinct keys by a radix sort (as torch.unique with inverse and counts).");

static PyObject *batch_keys(PyObject *self, PyObject *args) {
    PyObject *specs, *uniq_obj, *inverse_obj, *counts_obj, *offsets_obj, *bounds_obj;
    int batch;
    Py_ssize_t n, u = 0, bad = -1;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!iOOOOO", &PyTuple_Type, &specs, &batch, &uniq_obj,
                          &inverse_obj, &counts_obj, &offsets_obj, &bounds_obj))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(specs);
    int64_t *uniq = PyLong_AsVoidPtr(uniq_obj), *inverse = PyLong_AsVoidPtr(inverse_obj);
    int64_t *counts = PyLong_AsVoidPtr(counts_obj), *offsets = PyLong_AsVoidPtr(offsets_obj);
    int64_t *bounds = PyLong_AsVoidPtr(bounds_obj);
    if (PyErr_Occurred())
        return NULL;
    if (batch < 0) {
        PyErr_SetString(PyExc_ValueError, "batch_keys: batch must be >= 0");
        return NULL;
    }
    Member *members = malloc(sizeof(*members) * (size_t)(count ? count : 1));
    if (!members)
        return PyErr_NoMemory();
    if (parse_members(specs, members, count, &n) < 0) {
        free(members);
        return NULL;
    }
    char *scratch = malloc(5 * sizeof(int64_t) * (size_t)(n ? n : 1));
    if (!scratch) {
        free(members);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    int64_t *keys = (int64_t *)scratch;
    bad = fuse_members(members, count, batch, keys, offsets);
    if (bad < 0 && n)
        u = distinct_keys(keys, n, uniq, inverse, counts, scratch + sizeof(int64_t) * (size_t)n);
    if (bad < 0) {
        Py_ssize_t k = 0;
        for (Py_ssize_t m = 0; m < count; m++) {
            while (k < u && uniq[k] < members[m].key_offset)
                k++;
            bounds[m] = k;
        }
        bounds[count] = u;
    }
    Py_END_ALLOW_THREADS;
    free(scratch);
    int64_t rows = bad >= 0 ? members[bad].num_rows : 0;
    free(members);
    if (bad >= 0)
        return PyErr_Format(PyExc_IndexError, "member %zd: ids must be in [0, %lld)", bad,
                            (long long)rows);
    return PyLong_FromSsize_t(u);
}

PyDoc_STRVAR(admit_doc,
             "admit(tables, keys_ptr, counts_ptr, bounds_ptr, n_keys, pos_ptr, hit_ptr,\n"
             "      status_ptr, lookups_only)\n\n"
             "tables: for table m, ((keys_ptr, a_ptr, last_used_ptr, accum_ptr, rank, start,\n"
             "capacity, key_offset, num_rows), index, sketch, admit_after, n_active, stamp): its\n"
             "region of the buffers (keys int64, A (rank wide), last_used and accum float32, each\n"
             "pointing at the region's first row), its index (as hash_index.CuckooIndex.\n"
             "kernel_spec), sketch None or (counters_ptr uint8 (2, 2**bits), bits,\n"
             "since_reset_ptr int64, (m0, m1)). keys (n_keys,) int64 sorted distinct, counts their\n"
             "occurrences, table m's keys keys[bounds[m]:bounds[m + 1]] (bounds int64, tables + 1).\n"
             "Writes pos (n_keys,) int64 (start + row, start when inactive), hit (n_keys,) bool and\n"
             "status (tables, 3) int64: admitted, refused, indexed (0: the index lost a key to a\n"
             "cuckoo cycle, rebuild it). See the module's docstring.");

static PyObject *admit(PyObject *self, PyObject *args) {
    PyObject *specs, *keys_obj, *counts_obj, *bounds_obj, *pos_obj, *hit_obj, *status_obj;
    Py_ssize_t n_keys;
    int lookups_only;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOnOOOp", &PyTuple_Type, &specs, &keys_obj, &counts_obj,
                          &bounds_obj, &n_keys, &pos_obj, &hit_obj, &status_obj, &lookups_only))
        return NULL;
    const int64_t *keys = PyLong_AsVoidPtr(keys_obj), *counts = PyLong_AsVoidPtr(counts_obj);
    const int64_t *bounds = PyLong_AsVoidPtr(bounds_obj);
    int64_t *pos = PyLong_AsVoidPtr(pos_obj), *status = PyLong_AsVoidPtr(status_obj);
    uint8_t *hit = PyLong_AsVoidPtr(hit_obj);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(specs);
    if (n_keys < 0) {
        PyErr_SetString(PyExc_ValueError, "admit: n_keys must be >= 0");
        return NULL;
    }
    Table *tables = malloc(sizeof(*tables) * (size_t)(count ? count : 1));
    if (!tables)
        return PyErr_NoMemory();
    for (Py_ssize_t m = 0; m < count; m++)
        if (parse_table(PyTuple_GET_ITEM(specs, m), &tables[m]) < 0) {
            free(tables);
            return NULL;
        }
    if (keys_in_range(tables, count, keys, counts, bounds, n_keys) < 0) {
        free(tables);
        PyErr_SetString(PyExc_IndexError, "admit: a bound, key or count is out of range");
        return NULL;
    }
    int done;
    Py_BEGIN_ALLOW_THREADS;
    done = run_admit(tables, count, keys, counts, bounds, pos, hit, lookups_only, status);
    Py_END_ALLOW_THREADS;
    free(tables);
    if (done < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sight_doc,
             "sight(sketch, ids_ptr, counts_ptr, k, estimate_ptr)\n\n"
             "Count counts[i] (int64, >= 0) more sightings of the k distinct ids[i] (int64) in\n"
             "the sketch (as admit's sketch spec); estimate (k,) int64: each id's estimated\n"
             "recent sightings, these included.");

static PyObject *sight_ids(PyObject *self, PyObject *args) {
    PyObject *spec, *ids_obj, *counts_obj, *estimate_obj;
    Py_ssize_t k;
    Sketch sk;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOnO", &PyTuple_Type, &spec, &ids_obj, &counts_obj, &k,
                          &estimate_obj) ||
        parse_sketch(spec, &sk) < 0)
        return NULL;
    const int64_t *ids = PyLong_AsVoidPtr(ids_obj), *counts = PyLong_AsVoidPtr(counts_obj);
    int64_t *estimate = PyLong_AsVoidPtr(estimate_obj);
    if (PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 0; i < k; i++)
        if (counts[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "sight: counts must be >= 0");
            return NULL;
        }
    uint64_t *buckets = malloc(sizeof(*buckets) * DEPTH * (size_t)(k > 0 ? k : 1));
    if (!buckets)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS;
    sight(&sk, ids, counts, k, estimate, buckets);
    Py_END_ALLOW_THREADS;
    free(buckets);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(argsort_doc,
             "argsort(keys_ptr, n, sorted_ptr, order_ptr)\n\n"
             "As torch.sort(keys) for n int64 keys: the keys in ascending order into sorted, their\n"
             "positions into order (int64, room for n each; equal keys keep their order).");

static PyObject *argsort(PyObject *self, PyObject *args) {
    PyObject *keys_obj, *sorted_obj, *order_obj;
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "OnOO", &keys_obj, &n, &sorted_obj, &order_obj))
        return NULL;
    const int64_t *keys = PyLong_AsVoidPtr(keys_obj);
    int64_t *sorted = PyLong_AsVoidPtr(sorted_obj), *order = PyLong_AsVoidPtr(order_obj);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "argsort: n must be >= 0");
        return NULL;
    }
    if (n == 0)
        Py_RETURN_NONE;
    char *scratch = malloc(3 * sizeof(int64_t) * (size_t)n);
    if (!scratch)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS;
    sort_keys(keys, n, sorted, order, scratch);
    Py_END_ALLOW_THREADS;
    free(scratch);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(active_rows_doc,
             "active_rows(index, ids_ptr, n, out_ids_ptr, out_rows_ptr) -> int\n\n"
             "Of n int64 ids (any, repeats allowed) the distinct ones the index holds, ascending,\n"
             "into out_ids and their rows into out_rows (int64, room for n each); returns how many.\n"
             "As torch.unique(ids), the index's lookup and the hits kept (LiveEmbedding.evict).");

static PyObject *active_rows(PyObject *self, PyObject *args) {
    PyObject *spec, *ids_obj, *out_ids_obj, *out_rows_obj;
    Py_ssize_t n, u = 0, k = 0;
    Index index;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OnOO", &PyTuple_Type, &spec, &ids_obj, &n, &out_ids_obj,
                          &out_rows_obj) ||
        parse_index(spec, &index) < 0)
        return NULL;
    const int64_t *ids = PyLong_AsVoidPtr(ids_obj);
    int64_t *out_ids = PyLong_AsVoidPtr(out_ids_obj), *out_rows = PyLong_AsVoidPtr(out_rows_obj);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "active_rows: n must be >= 0");
        return NULL;
    }
    if (n == 0)
        return PyLong_FromSsize_t(0);
    /* the sort's scratch (3 n) and order (n), then the lookups' rows and pending (n each) */
    char *scratch = malloc((4 * sizeof(int64_t) + sizeof(int32_t) + sizeof(Py_ssize_t)) * (size_t)n);
    if (!scratch)
        return PyErr_NoMemory();
    int64_t *order = (int64_t *)scratch + 3 * n;
    int32_t *rows = (int32_t *)(order + n);
    Py_ssize_t *pending = (Py_ssize_t *)(rows + n);
    Py_BEGIN_ALLOW_THREADS;
    sort_keys(ids, n, out_ids, order, scratch);
    for (Py_ssize_t i = 0; i < n; i++)
        if (i == 0 || out_ids[i] != out_ids[u - 1])
            out_ids[u++] = out_ids[i];
    resolve(&index, out_ids, u, 0, rows, pending, NULL, 0);
    for (Py_ssize_t i = 0; i < u; i++)
        if (rows[i]) {
            out_ids[k] = out_ids[i];
            out_rows[k++] = rows[i] - 1;
        }
    Py_END_ALLOW_THREADS;
    free(scratch);
    return PyLong_FromSsize_t(k);
}

static int by_value(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* pos: k distinct rows in [0, n); 0 when they are, else sets the error */
static int check_rows(const int64_t *pos, Py_ssize_t k, Py_ssize_t n, int64_t *scratch) {
    memcpy(scratch, pos, sizeof(*pos) * (size_t)k);
    qsort(scratch, (size_t)k, sizeof(*scratch), by_value);
    for (Py_ssize_t i = 0; i < k; i++)
        if (scratch[i] < 0 || scratch[i] >= n || (i && scratch[i] == scratch[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "evict: rows must be distinct and in [0, n)");
            return -1;
        }
    return 0;
}

/* The eviction of check_rows' rows, in the order LiveEmbedding.evict's torch ops had: their
   keys leave the index; the holes (rows below n - k, in pos order) take the tail's staying rows
   (ascending); each moved key is indexed at its hole. 1 when one could not be placed. */
static int evict_rows(Table *t, const int64_t *pos, Py_ssize_t k, int64_t *work) {
    int64_t *holes = work, *movers = work + k, *keys = work + 2 * k;
    char *leaving = (char *)(work + 3 * k);
    Py_ssize_t cut = t->n_active - k, h = 0, m = 0;
    memset(leaving, 0, (size_t)k);
    for (Py_ssize_t i = 0; i < k; i++) {
        keys[i] = t->keys[pos[i]];
        if (pos[i] >= cut)
            leaving[pos[i] - cut] = 1;
        else
            holes[h++] = pos[i];
    }
    unassign(&t->index, keys, k);
    for (Py_ssize_t r = cut; r < t->n_active; r++)
        if (!leaving[r - cut])
            movers[m++] = r;
    for (Py_ssize_t j = 0; j < h; j++) {
        int64_t to = holes[j], from = movers[j];
        t->keys[to] = t->keys[from];
        memcpy(t->a + to * t->rank, t->a + from * t->rank, sizeof(float) * (size_t)t->rank);
        t->last_used[to] = t->last_used[from];
        t->accum[to] = t->accum[from];
        keys[j] = t->keys[to];
    }
    return assign(&t->index, keys, holes, h) < h;
}

PyDoc_STRVAR(evict_doc,
             "evict(index, keys_ptr, a_ptr, last_used_ptr, accum_ptr, rank, n, rows_ptr, k) -> bool\n\n"
             "Remove k distinct active rows (int64 rows_ptr, in [0, n)) of a LiveEmbedding's\n"
             "storage whose first n rows are active (keys int64, A (., rank), last use and\n"
             "accumulator float32): their keys leave the index, the last k rows' staying ones\n"
             "move into the holes and are indexed there. True when the index lost a key (a\n"
             "cuckoo cycle): rebuild it.");

static PyObject *evict(PyObject *self, PyObject *args) {
    PyObject *spec, *keys_obj, *a_obj, *used_obj, *accum_obj, *pos_obj;
    Py_ssize_t n, k;
    Table t = {0};
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOOinOn", &PyTuple_Type, &spec, &keys_obj, &a_obj,
                          &used_obj, &accum_obj, &t.rank, &n, &pos_obj, &k) ||
        parse_index(spec, &t.index) < 0)
        return NULL;
    t.keys = PyLong_AsVoidPtr(keys_obj), t.a = PyLong_AsVoidPtr(a_obj);
    t.last_used = PyLong_AsVoidPtr(used_obj), t.accum = PyLong_AsVoidPtr(accum_obj);
    const int64_t *pos = PyLong_AsVoidPtr(pos_obj);
    if (PyErr_Occurred())
        return NULL;
    if (t.rank < 1 || t.rank > MAX_RANK || k < 0 || n < k) {
        PyErr_Format(PyExc_ValueError, "evict: rank in [1, %d] and 0 <= k <= n", MAX_RANK);
        return NULL;
    }
    t.n_active = n;
    /* holes, movers, keys (k int64 each), the tail's leaving flags (k bytes) */
    int64_t *work = malloc(sizeof(int64_t) * (size_t)(4 * k + 1));
    if (!work)
        return PyErr_NoMemory();
    if (check_rows(pos, k, n, work) < 0) {
        free(work);
        return NULL;
    }
    int lost;
    Py_BEGIN_ALLOW_THREADS;
    lost = evict_rows(&t, pos, k, work);
    Py_END_ALLOW_THREADS;
    free(work);
    return PyBool_FromLong(lost);
}

/* LRU candidates: a min-heap of the `count` best rows so far, its root the worst of them.
   Better: older (a larger age), of equal ages the higher row (the tail: LiveEmbedding.evict
   moves no row into a hole the tail leaves); a strict order, so the pick does not depend on
   how it is found. */
typedef struct {
    double age;
    int64_t row;
} Aged;

INLINE int older(Aged x, Aged y) { return x.age > y.age || (x.age == y.age && x.row > y.row); }

static void sift_down(Aged *heap, Py_ssize_t size, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < size && older(heap[worst], heap[l]))
            worst = l;
        if (r < size && older(heap[worst], heap[r]))
            worst = r;
        if (worst == i)
            return;
        Aged t = heap[i];
        heap[i] = heap[worst], heap[worst] = t, i = worst;
    }
}

static void sift_up(Aged *heap, Py_ssize_t i) {
    while (i > 0 && older(heap[(i - 1) / 2], heap[i])) {
        Aged t = heap[i];
        heap[i] = heap[(i - 1) / 2], heap[(i - 1) / 2] = t, i = (i - 1) / 2;
    }
}

/* Up to count of the n rows aged elapsed - last_used[row] >= min_age (not NaN) and not
   protected, oldest first (ties: the higher row), into out; returns how many. O(n log count). */
static Py_ssize_t least_recent(const float *last_used, Py_ssize_t n, double elapsed,
                               double min_age, const char *protected, Py_ssize_t count,
                               int64_t *out, Aged *heap) {
    Py_ssize_t size = 0;
    for (Py_ssize_t row = 0; row < n && count > 0; row++) {
        Aged x = {elapsed - (double)last_used[row], row};
        if (!(x.age >= min_age) || protected[row])
            continue;
        if (size < count)
            heap[size] = x, sift_up(heap, size++);
        else if (older(x, heap[0]))
            heap[0] = x, sift_down(heap, size, 0);
    }
    for (Py_ssize_t k = size; k > 0; k--) { /* the worst kept goes last */
        out[k - 1] = heap[0].row;
        heap[0] = heap[k - 1];
        sift_down(heap, k - 1, 0);
    }
    return size;
}

PyDoc_STRVAR(lru_doc,
             "lru(index, last_used_ptr, n, elapsed, min_age, protect_ptr, p, count, out_ptr) -> int\n\n"
             "RankController's LRU pick over a LiveEmbedding's n active rows (last use float32,\n"
             "seconds since its time origin; elapsed: now since that origin): up to count rows\n"
             "whose age elapsed - last_used (in float64) is >= min_age, skipping the rows of the\n"
             "p int64 ids protect_ptr holds (looked up in the index), the oldest first, equal\n"
             "ages the higher row first. Writes them (int64) into out_ptr (room for count);\n"
             "returns how many.");

static PyObject *lru(PyObject *self, PyObject *args) {
    PyObject *spec, *used_obj, *protect_obj, *out_obj;
    Py_ssize_t n, p, count;
    double elapsed, min_age;
    Index index;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OnddOnnO", &PyTuple_Type, &spec, &used_obj, &n, &elapsed,
                          &min_age, &protect_obj, &p, &count, &out_obj) ||
        parse_index(spec, &index) < 0)
        return NULL;
    const float *last_used = PyLong_AsVoidPtr(used_obj);
    const int64_t *protect = PyLong_AsVoidPtr(protect_obj);
    int64_t *out = PyLong_AsVoidPtr(out_obj);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0 || p < 0 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "lru: n, p and count must be >= 0");
        return NULL;
    }
    if (count > n)
        count = n;
    /* the protected flags (n), the protected ids' rows (p int32) and lookup scratch (p), heap */
    char *protected = calloc((size_t)n + 1, 1);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)p + 1);
    Py_ssize_t *pending = malloc(sizeof(Py_ssize_t) * (size_t)p + 1);
    Aged *heap = malloc(sizeof(Aged) * (size_t)count + 1);
    if (!protected || !rows || !pending || !heap) {
        free(protected), free(rows), free(pending), free(heap);
        return PyErr_NoMemory();
    }
    Py_ssize_t found;
    Py_BEGIN_ALLOW_THREADS;
    resolve(&index, protect, p, 0, rows, pending, NULL, 0);
    for (Py_ssize_t i = 0; i < p; i++)
        if (rows[i] > 0 && rows[i] <= n)
            protected[rows[i] - 1] = 1;
    found = least_recent(last_used, n, elapsed, min_age, protected, count, out, heap);
    Py_END_ALLOW_THREADS;
    free(protected), free(rows), free(pending), free(heap);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"admit", admit, METH_VARARGS, admit_doc},
    {"sight", sight_ids, METH_VARARGS, sight_doc},
    {"batch_keys", batch_keys, METH_VARARGS, batch_keys_doc},
    {"argsort", argsort, METH_VARARGS, argsort_doc},
    {"active_rows", active_rows, METH_VARARGS, active_rows_doc},
    {"evict", evict, METH_VARARGS, evict_doc},
    {"lru", lru, METH_VARARGS, lru_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_admission_kernel",
    .m_doc = "The trainer's admission pass and the second-sighting sketch "
             "(_admission_kernel.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__admission_kernel(void) { return PyModule_Create(&module); }
