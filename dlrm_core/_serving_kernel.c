/* The serving path's low-rank correction as one pass over a batch's ids, for dlrm_core.serving.

For each bag of each table of a rank group it finds the bag's active rows through the cuckoo
index (dlrm_core/hash_index.py: 8-slot buckets of (key, 1 + row) pairs, two bucket choices per
key by multiplicative hashes), sums their rows of A and adds (that sum) @ B_t into the pooled
embeddings, in place. Done with torch ops this is ~27 ops per batch, each allocating its output:
on a batch of 512 the ops' fixed costs and their intermediates' cache misses cost as much as the
lookups themselves, and on a request of a few rows they are nearly all of it. It also builds the
index (sequential cuckoo insertion; the index's code is _cuckoo_index.h, shared with the
admission kernel).

Ids are resolved one feature at a time in passes that prefetch the buckets of the id PREFETCH
ahead, then summed in a pass that prefetches rows of A ahead: independent cache misses overlap
instead of waiting one by one. The GIL is released while it runs.

The Python side (serving.py, hash_index.py) validates dtypes, shapes and contiguity and passes
data pointers; nothing here allocates Python objects or trusts anything but those pointers.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cuckoo_index.h"

#define PREFETCH 16
#define MAX_RANK 1024
#define LANES 8
/* 8 floats: one AVX2 register (two SSE ones in the baseline clone); unaligned loads allowed */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));

/* One table's bags: out[s * stride + d] += sum over rows of bag s of (A[row] @ b_t)[d]. Cloned
   for AVX-512 and AVX2 with FMA, picked at load time: the (rank x dim) product per bag is most
   of the arithmetic, and the baseline x86-64 target (SSE2) would make it 4 floats wide. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void add_table(const int32_t *rows, Py_ssize_t nnz, const int64_t *starts, Py_ssize_t batch,
                      const float *restrict a, int rank, const float *restrict b_t,
                      float *restrict out, size_t stride, int dim) {
    float sum[MAX_RANK];
    for (Py_ssize_t s = 0; s < batch; s++) {
        Py_ssize_t end = s + 1 < batch ? starts[s + 1] : nnz;
        int any = 0;
        for (Py_ssize_t i = starts[s]; i < end; i++) {
            if (!rows[i])
                continue;
            const float *restrict a_row = a + (size_t)rows[i] * rank;
            int k = 0;
            if (any) {
                for (; k + LANES <= rank; k += LANES)
                    *(lanes *)(sum + k) += *(const lanes *)(a_row + k);
                for (; k < rank; k++)
                    sum[k] += a_row[k];
            } else { /* the bag's first active row (most bags have one) */
                for (; k + LANES <= rank; k += LANES)
                    *(lanes *)(sum + k) = *(const lanes *)(a_row + k);
                for (; k < rank; k++)
                    sum[k] = a_row[k];
                any = 1;
            }
        }
        if (!any)
            continue;
        /* out += sum @ b_t, two register-wide chunks of the output at a time */
        float *restrict bag_out = out + (size_t)s * stride;
        int d = 0;
        for (; d + 2 * LANES <= dim; d += 2 * LANES) {
            lanes low = *(const lanes *)(bag_out + d), high = *(const lanes *)(bag_out + d + LANES);
            const float *restrict b_row = b_t + d;
#pragma GCC unroll 8
            for (int k = 0; k < rank; k++, b_row += dim) {
                low += sum[k] * *(const lanes *)b_row;
                high += sum[k] * *(const lanes *)(b_row + LANES);
            }
            *(lanes *)(bag_out + d) = low;
            *(lanes *)(bag_out + d + LANES) = high;
        }
        for (; d < dim; d++) {
            float acc = bag_out[d];
            for (int k = 0; k < rank; k++)
                acc += sum[k] * b_t[(size_t)k * dim + d];
            bag_out[d] = acc;
        }
    }
}

/* Bag s's row sum into out + s * stride, nv vectors of LANES dims, the rows added in order from
   zero as pool_table adds them; nv a constant where inlined: the sums stay in registers instead
   of being loaded and stored for every row. */
INLINE int pool_table_nv(const float *restrict weight, int64_t table_rows, const int64_t *ids,
                         Py_ssize_t nnz, const int64_t *starts, Py_ssize_t batch,
                         float *restrict out, size_t stride, int nv) {
    for (Py_ssize_t s = 0; s < batch; s++) {
        Py_ssize_t end = s + 1 < batch ? starts[s + 1] : nnz;
        lanes sum[4];
        for (int q = 0; q < nv; q++)
            sum[q] = (lanes){0};
        for (Py_ssize_t i = starts[s]; i < end; i++) {
            if (i + PREFETCH < nnz && (uint64_t)ids[i + PREFETCH] < (uint64_t)table_rows)
                __builtin_prefetch(weight + (size_t)ids[i + PREFETCH] * nv * LANES);
            if ((uint64_t)ids[i] >= (uint64_t)table_rows)
                return -1;
            const float *restrict row = weight + (size_t)ids[i] * nv * LANES;
            for (int q = 0; q < nv; q++)
                sum[q] += *(const lanes *)(row + q * LANES);
        }
        for (int q = 0; q < nv; q++)
            *(lanes *)(out + (size_t)s * stride + q * LANES) = sum[q];
    }
    return 0;
}

/* out[s * stride + d] = sum over ids of bag s of weight[id][d], for one table; returns 0, or -1
   if an id is outside [0, rows) (out is then partly written). Rows are prefetched PREFETCH ids
   ahead: at a few ids per request, torch's embedding_bag spends ~14 us per table on bookkeeping
   around a handful of loads. Dims of one to four vectors (the models' 16) sum in registers
   (pool_table_nv: MovieLens-100k's 8 tables, batch 512, 30 -> 13 us; the same bits). */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static int pool_table(const float *restrict weight, int64_t table_rows, const int64_t *ids,
                      Py_ssize_t nnz, const int64_t *starts, Py_ssize_t batch,
                      float *restrict out, size_t stride, int dim) {
    switch (dim) {
    case LANES: return pool_table_nv(weight, table_rows, ids, nnz, starts, batch, out, stride, 1);
    case 2 * LANES:
        return pool_table_nv(weight, table_rows, ids, nnz, starts, batch, out, stride, 2);
    case 3 * LANES:
        return pool_table_nv(weight, table_rows, ids, nnz, starts, batch, out, stride, 3);
    case 4 * LANES:
        return pool_table_nv(weight, table_rows, ids, nnz, starts, batch, out, stride, 4);
    default: break;
    }
    for (Py_ssize_t s = 0; s < batch; s++) {
        Py_ssize_t end = s + 1 < batch ? starts[s + 1] : nnz;
        float *restrict bag_out = out + (size_t)s * stride;
        for (int d = 0; d < dim; d++)
            bag_out[d] = 0.0f;
        for (Py_ssize_t i = starts[s]; i < end; i++) {
            if (i + PREFETCH < nnz && (uint64_t)ids[i + PREFETCH] < (uint64_t)table_rows)
                __builtin_prefetch(weight + (size_t)ids[i + PREFETCH] * dim);
            if ((uint64_t)ids[i] >= (uint64_t)table_rows)
                return -1;
            const float *restrict row = weight + (size_t)ids[i] * dim;
            int d = 0;
            for (; d + LANES <= dim; d += LANES)
                *(lanes *)(bag_out + d) += *(const lanes *)(row + d);
            for (; d < dim; d++)
                bag_out[d] += row[d];
        }
    }
    return 0;
}

PyDoc_STRVAR(build_doc,
             "build(index, keys_ptr, n) -> bool\n\n"
             "Fill the index's slots with keys[i] -> i + 1 for n unique keys >= 0 of the index's\n"
             "width; False when they do not fit (the caller retries with twice the buckets).");

/* The arguments (index, keys_ptr, n) of build and unassign: -1 with an exception set when
 * they are not. */
static int parse_index_keys(PyObject *args, Index *ix, const void **keys, Py_ssize_t *n) {
    PyObject *spec, *keys_obj;
    if (!PyArg_ParseTuple(args, "O!On", &PyTuple_Type, &spec, &keys_obj, n))
        return -1;
    if (parse_index(spec, ix) < 0)
        return -1;
    *keys = PyLong_AsVoidPtr(keys_obj);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *build(PyObject *self, PyObject *args) {
    const void *keys;
    Py_ssize_t n;
    Index ix;
    (void)self;
    if (parse_index_keys(args, &ix, &keys, &n) < 0)
        return NULL;
    int placed;
    Py_BEGIN_ALLOW_THREADS;
    placed = place(&ix, keys, n);
    Py_END_ALLOW_THREADS;
    if (placed < 0)
        return PyErr_NoMemory();
    return PyBool_FromLong(placed);
}

PyDoc_STRVAR(lookup_doc,
             "lookup(index, queries_ptr, n, out_ptr)\n\n"
             "out[i] (int32) = 1 + the row of queries[i] (int64), 0 when not indexed.");

static PyObject *lookup(PyObject *self, PyObject *args) {
    PyObject *spec, *queries_obj, *out_obj;
    Py_ssize_t n;
    Index ix;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OnO", &PyTuple_Type, &spec, &queries_obj, &n, &out_obj))
        return NULL;
    if (parse_index(spec, &ix) < 0)
        return NULL;
    const int64_t *queries = PyLong_AsVoidPtr(queries_obj);
    int32_t *out = PyLong_AsVoidPtr(out_obj);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t *pending = malloc(sizeof(*pending) * (size_t)(n ? n : 1));
    if (!pending)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS;
    resolve(&ix, queries, n, 0, out, pending, NULL, 0);
    Py_END_ALLOW_THREADS;
    free(pending);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(assign_doc,
             "assign(index, keys_ptr, rows_ptr, n) -> int\n\n"
             "Index keys[i] (int64, unique, >= 0, of the index's width) at row rows[i] (int64), a\n"
             "key already indexed moving to its new row. Returns how many keys were placed before\n"
             "one found no room (n when all did; else the index lost a key: rebuild it).");

static PyObject *assign_keys(PyObject *self, PyObject *args) {
    PyObject *spec, *keys_obj, *rows_obj;
    Py_ssize_t n, done;
    Index ix;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOn", &PyTuple_Type, &spec, &keys_obj, &rows_obj, &n))
        return NULL;
    if (parse_index(spec, &ix) < 0)
        return NULL;
    const int64_t *keys = PyLong_AsVoidPtr(keys_obj), *rows = PyLong_AsVoidPtr(rows_obj);
    if (PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    done = assign(&ix, keys, rows, n);
    Py_END_ALLOW_THREADS;
    return PyLong_FromSsize_t(done);
}

PyDoc_STRVAR(unassign_doc,
             "unassign(index, keys_ptr, n) -> int\n\n"
             "Remove keys[i] (int64) from the index; returns how many were indexed.");

static PyObject *unassign_keys(PyObject *self, PyObject *args) {
    const void *keys;
    Py_ssize_t n, removed;
    Index ix;
    (void)self;
    if (parse_index_keys(args, &ix, &keys, &n) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    removed = unassign(&ix, keys, n);
    Py_END_ALLOW_THREADS;
    return PyLong_FromSsize_t(removed);
}

PyDoc_STRVAR(add_bags_doc,
             "add_bags(index, a_ptr, rank, b_ptr, pooled_ptr, batch, num_features, dim, bags)\n\n"
             "For each (values_ptr, nnz, offsets_ptr, feature, key_offset) in bags (a tuple, table t\n"
             "of the group at position t): pooled[b, feature] += (sum of A[rows of bag b]) @ B[t],\n"
             "A (1 + n, rank) float32 (row 0 unused), B (T, rank, dim) float32, pooled (batch,\n"
             "num_features, dim) float32, all contiguous; offsets (batch,) int64 bag starts.");

typedef struct {
    const int64_t *values, *offsets;
    Py_ssize_t nnz;
    int feature;
    int64_t shift;
} Table;

static PyObject *add_bags(PyObject *self, PyObject *args) {
    PyObject *spec, *a_obj, *b_obj, *pooled_obj, *bags;
    int rank, num_features, dim;
    Py_ssize_t batch;
    Index ix;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OiOOniiO!", &PyTuple_Type, &spec, &a_obj, &rank, &b_obj,
                          &pooled_obj, &batch, &num_features, &dim, &PyTuple_Type, &bags))
        return NULL;
    if (parse_index(spec, &ix) < 0)
        return NULL;
    if (rank < 1 || rank > MAX_RANK || dim < 1) {
        PyErr_Format(PyExc_ValueError, "rank must be in [1, %d] and dim >= 1", MAX_RANK);
        return NULL;
    }
    const float *a = PyLong_AsVoidPtr(a_obj);
    const float *b = PyLong_AsVoidPtr(b_obj);
    float *pooled = PyLong_AsVoidPtr(pooled_obj);
    if (PyErr_Occurred())
        return NULL;

    Py_ssize_t count = PyTuple_GET_SIZE(bags), most = 1;
    Table *tables = malloc(sizeof(*tables) * (size_t)(count ? count : 1));
    if (!tables)
        return PyErr_NoMemory();
    for (Py_ssize_t t = 0; t < count; t++) {
        PyObject *values_obj, *offsets_obj;
        long long shift;
        Table *table = &tables[t];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(bags, t), "OnOiL", &values_obj, &table->nnz,
                              &offsets_obj, &table->feature, &shift))
            goto fail;
        table->values = PyLong_AsVoidPtr(values_obj);
        table->offsets = PyLong_AsVoidPtr(offsets_obj);
        table->shift = shift;
        if (PyErr_Occurred())
            goto fail;
        if (table->feature < 0 || table->feature >= num_features || table->nnz < 0) {
            PyErr_SetString(PyExc_ValueError, "bags: feature out of range or negative nnz");
            goto fail;
        }
        if (table->nnz > most)
            most = table->nnz;
    }
    int32_t *rows = malloc(sizeof(*rows) * (size_t)most);
    Py_ssize_t *pending = malloc(sizeof(*pending) * (size_t)most);
    if (!rows || !pending) {
        free(rows);
        free(pending);
        PyErr_NoMemory();
        goto fail;
    }

    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t t = 0; t < count; t++) {
        const Table *table = &tables[t];
        resolve(&ix, table->values, table->nnz, table->shift, rows, pending, a, rank);
        add_table(rows, table->nnz, table->offsets, batch, a, rank, b + (size_t)t * rank * dim,
                  pooled + (size_t)table->feature * dim, (size_t)num_features * dim, dim);
    }
    Py_END_ALLOW_THREADS;

    free(pending);
    free(rows);
    free(tables);
    Py_RETURN_NONE;

fail:
    free(tables);
    return NULL;
}

PyDoc_STRVAR(pool_bags_doc,
             "pool_bags(tables, batch, dim, pooled_ptr) -> int\n\n"
             "For each (weight_ptr, rows, values_ptr, nnz, offsets_ptr) in tables (feature f at\n"
             "position f): pooled[b, f] = sum of weight[ids of bag b], weight (rows, dim) float32,\n"
             "pooled (batch, len(tables), dim) float32, all contiguous. Returns -1, or the position\n"
             "of the first table with an id outside [0, rows).");

static PyObject *pool_bags(PyObject *self, PyObject *args) {
    PyObject *specs, *pooled_obj;
    Py_ssize_t batch;
    int dim;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!niO", &PyTuple_Type, &specs, &batch, &dim, &pooled_obj))
        return NULL;
    float *pooled = PyLong_AsVoidPtr(pooled_obj);
    if (PyErr_Occurred())
        return NULL;
    if (dim < 1) {
        PyErr_SetString(PyExc_ValueError, "dim must be >= 1");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(specs);
    typedef struct {
        const float *weight;
        long long rows;
        const int64_t *values, *offsets;
        Py_ssize_t nnz;
    } Spec;
    Spec *tables = malloc(sizeof(*tables) * (size_t)(count ? count : 1));
    if (!tables)
        return PyErr_NoMemory();
    for (Py_ssize_t t = 0; t < count; t++) {
        PyObject *weight_obj, *values_obj, *offsets_obj;
        Spec *table = &tables[t];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs, t), "OLOnO", &weight_obj, &table->rows,
                              &values_obj, &table->nnz, &offsets_obj)) {
            free(tables);
            return NULL;
        }
        table->weight = PyLong_AsVoidPtr(weight_obj);
        table->values = PyLong_AsVoidPtr(values_obj);
        table->offsets = PyLong_AsVoidPtr(offsets_obj);
        if (PyErr_Occurred()) {
            free(tables);
            return NULL;
        }
    }
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t t = 0; t < count && bad < 0; t++) {
        const Spec *table = &tables[t];
        if (pool_table(table->weight, table->rows, table->values, table->nnz, table->offsets,
                       batch, pooled + (size_t)t * dim, (size_t)count * dim, dim) < 0)
            bad = t;
    }
    Py_END_ALLOW_THREADS;
    free(tables);
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, build_doc},
    {"lookup", lookup, METH_VARARGS, lookup_doc},
    {"assign", assign_keys, METH_VARARGS, assign_doc},
    {"unassign", unassign_keys, METH_VARARGS, unassign_doc},
    {"add_bags", add_bags, METH_VARARGS, add_bags_doc},
    {"pool_bags", pool_bags, METH_VARARGS, pool_bags_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_serving_kernel",
    .m_doc = "The serving path's cuckoo index and fused low-rank correction (_serving_kernel.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__serving_kernel(void) { return PyModule_Create(&module); }
