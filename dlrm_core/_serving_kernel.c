/* The serving path's low-rank correction as one pass over a batch's ids, for dlrm_core.serving.

For each bag of each table of a rank group it finds the bag's active rows through the cuckoo
index (dlrm_core/hash_index.py: three multiplicative hashes, one (key, 1 + row) pair per slot),
sums their rows of A and adds (that sum) @ B_t into the pooled embeddings, in place. Done with
torch ops this is ~27 ops per batch, each allocating its output: on a batch of 512 the ops'
fixed costs and their intermediates' cache misses cost as much as the lookups themselves, and on
a request of a few rows they are nearly all of it.

Ids are resolved one feature at a time in a first pass that prefetches the three slots of the id
PREFETCH ahead, then summed in a second pass that prefetches rows of A ahead: independent misses
overlap instead of waiting one by one. The GIL is released while it runs.

The Python side (serving.py, hash_index.py) validates dtypes, shapes and contiguity and passes
data pointers; nothing here allocates Python objects or trusts anything but those pointers.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PREFETCH 16
#define MAX_RANK 1024
#define LANES 8
/* 8 floats: one AVX2 register (two SSE ones in the baseline clone); unaligned loads allowed */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));

typedef struct {
    const void *slots; /* (2**bits, 2) int32 or int64: (key, 1 + row), (-1, 0) when empty */
    int bits;
    int width; /* 32 or 64: the keys' dtype */
    uint64_t mult[3];
} Index;

static inline uint64_t slot_of(const Index *ix, int choice, uint64_t key) {
    if (ix->width == 32)
        return (uint32_t)((uint32_t)key * (uint32_t)ix->mult[choice]) >> (32 - ix->bits);
    return (key * ix->mult[choice]) >> (64 - ix->bits);
}

static inline void prefetch_slots(const Index *ix, int64_t key) {
    size_t pair = ix->width / 8 * 2;
    for (int c = 0; c < 3; c++)
        __builtin_prefetch((const char *)ix->slots + slot_of(ix, c, (uint64_t)key) * pair);
}

/* 1 + the row of key, 0 when the key is not indexed. Two choices of a key can name one slot,
   and an empty slot holds key -1, so a miss never matches (keys are >= 0). */
static inline int32_t row_of(const Index *ix, int64_t key) {
    if (key < 0)
        return 0;
    if (ix->width == 32) {
        if (key > INT32_MAX)
            return 0;
        const int32_t *s = ix->slots;
        for (int c = 0; c < 3; c++) {
            uint64_t at = slot_of(ix, c, (uint64_t)key);
            if (s[2 * at] == (int32_t)key)
                return s[2 * at + 1];
        }
        return 0;
    }
    const int64_t *s = ix->slots;
    for (int c = 0; c < 3; c++) {
        uint64_t at = slot_of(ix, c, (uint64_t)key);
        if (s[2 * at] == key)
            return (int32_t)s[2 * at + 1];
    }
    return 0;
}

static void resolve(const Index *ix, const int64_t *ids, Py_ssize_t n, int64_t shift,
                    int32_t *rows) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH < n)
            prefetch_slots(ix, ids[i + PREFETCH] + shift);
        rows[i] = row_of(ix, ids[i] + shift);
    }
}

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
            if (i + PREFETCH / 2 < nnz)
                __builtin_prefetch(a + (size_t)rows[i + PREFETCH / 2] * rank);
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

static int parse_index(PyObject *spec, Index *ix) {
    /* (slots pointer, bits, width, (m0, m1, m2)) */
    PyObject *slots;
    long long m0, m1, m2;
    if (!PyArg_ParseTuple(spec, "Oii(LLL)", &slots, &ix->bits, &ix->width, &m0, &m1, &m2))
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
    ix->mult[2] = (uint64_t)m2;
    return 0;
}

PyDoc_STRVAR(lookup_doc,
             "lookup(index, queries_ptr, n, out_ptr)\n\n"
             "out[i] (int32) = 1 + the row of queries[i] (int64), 0 when not indexed.");

static PyObject *lookup(PyObject *self, PyObject *args) {
    PyObject *spec, *queries_obj, *out_obj;
    Py_ssize_t n;
    Index ix;
    if (!PyArg_ParseTuple(args, "O!OnO", &PyTuple_Type, &spec, &queries_obj, &n, &out_obj))
        return NULL;
    if (parse_index(spec, &ix) < 0)
        return NULL;
    const int64_t *queries = PyLong_AsVoidPtr(queries_obj);
    int32_t *out = PyLong_AsVoidPtr(out_obj);
    if (PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    resolve(&ix, queries, n, 0, out);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(add_bags_doc,
             "add_bags(index, a_ptr, rank, b_ptr, pooled_ptr, batch, num_features, dim, bags)\n\n"
             "For each (values_ptr, nnz, offsets_ptr, feature, key_offset) in bags (a tuple, table t\n"
             "of the group at position t): pooled[b, feature] += (sum of A[rows of bag b]) @ B[t],\n"
             "A (1 + n, rank) float32 with a zero row 0, B (T, rank, dim) float32, pooled (batch,\n"
             "num_features, dim) float32, all contiguous; offsets (batch,) int64 bag starts.");

static PyObject *add_bags(PyObject *self, PyObject *args) {
    PyObject *spec, *a_obj, *b_obj, *pooled_obj, *bags;
    int rank, num_features, dim;
    Py_ssize_t batch;
    Index ix;
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

    Py_ssize_t tables = PyTuple_GET_SIZE(bags);
    const int64_t **values = malloc(sizeof(*values) * (size_t)(tables ? tables : 1));
    const int64_t **offsets = malloc(sizeof(*offsets) * (size_t)(tables ? tables : 1));
    Py_ssize_t *nnz = malloc(sizeof(*nnz) * (size_t)(tables ? tables : 1));
    int *feature = malloc(sizeof(*feature) * (size_t)(tables ? tables : 1));
    int64_t *shift = malloc(sizeof(*shift) * (size_t)(tables ? tables : 1));
    int32_t *rows = NULL;
    if (!values || !offsets || !nnz || !feature || !shift)
        goto no_memory;
    Py_ssize_t most = 0;
    for (Py_ssize_t t = 0; t < tables; t++) {
        PyObject *bag = PyTuple_GET_ITEM(bags, t);
        PyObject *values_obj, *offsets_obj;
        long long key_offset;
        if (!PyArg_ParseTuple(bag, "OnOiL", &values_obj, &nnz[t], &offsets_obj, &feature[t],
                              &key_offset))
            goto fail;
        values[t] = PyLong_AsVoidPtr(values_obj);
        offsets[t] = PyLong_AsVoidPtr(offsets_obj);
        if (PyErr_Occurred())
            goto fail;
        if (feature[t] < 0 || feature[t] >= num_features || nnz[t] < 0) {
            PyErr_SetString(PyExc_ValueError, "bags: feature out of range or negative nnz");
            goto fail;
        }
        shift[t] = key_offset;
        if (nnz[t] > most)
            most = nnz[t];
    }
    rows = malloc(sizeof(*rows) * (size_t)(most ? most : 1));
    if (!rows)
        goto no_memory;

    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t t = 0; t < tables; t++) {
        resolve(&ix, values[t], nnz[t], shift[t], rows);
        add_table(rows, nnz[t], offsets[t], batch, a, rank, b + (size_t)t * rank * dim,
                  pooled + feature[t] * dim, (size_t)num_features * dim, dim);
    }
    Py_END_ALLOW_THREADS;

    free(rows);
    free(shift);
    free(feature);
    free(nnz);
    free(offsets);
    free(values);
    Py_RETURN_NONE;

no_memory:
    PyErr_NoMemory();
fail:
    free(rows);
    free(shift);
    free(feature);
    free(nnz);
    free(offsets);
    free(values);
    return NULL;
}

static PyMethodDef methods[] = {
    {"lookup", lookup, METH_VARARGS, lookup_doc},
    {"add_bags", add_bags, METH_VARARGS, add_bags_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_serving_kernel",
    "The serving path's fused low-rank correction (see _serving_kernel.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__serving_kernel(void) { return PyModule_Create(&module); }
