/* The trainers' fused steps, for dlrm_core.live_group (the node's low-rank correction) and
dlrm_core.trainer.FullSparseTrainer (the cluster's sparse embedding rows).

The correction of one rank group (T tables, batch B, rank r, dim D), in three calls per step:
  lora_forward   each bag's sum of its active A rows, (that sum) @ B_t * scale: the (T, B, D)
                 deltas, and the (T * B, r) sums kept for B's gradient;
  lora_backward  from the deltas' gradient G (T, B, D): each bag's dG @ B_tᵀ * scale summed into
                 its keys' rows (A's gradient per distinct key), B's gradient (sums)ᵀ G * scale,
                 and the rank controllers' statistics Gᵀ G (T, D, D), in one pass over the bags;
                 returns whether A's per-bag gradients and B's gradient are all finite;
  lora_step      row-wise Adagrad on the keys' A rows and Adam on the B of the tables given.
The step is its own call because a non-finite gradient in any group skips the whole trainer step:
the trainer checks every group's backward before any group's factors change.
With torch ops this is ~30 ops per group and step, each allocating its output (the embedding
bag, bmm, the hook's bmm, the optimizer's index ops and Adam's elementwise ops).

The cluster's step on its embedding rows, in one call (sparse_step): each distinct row's
gradient summed from its bags' gradients, checked finite, then SGD or Adagrad on the row, with
exactly torch.optim.SGD's and torch.optim.Adagrad's (lr_decay 0, no weight decay) sparse math,
the row's gradient L2 norm reported.

The GIL is released while they run. The Python side (live_group.py, trainer.py) validates
dtypes, shapes and contiguity and passes data pointers; nothing here allocates Python objects or
trusts anything but those pointers.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANK 1024
#define PREFETCH 16
#define LANES 8
/* 8 floats: one AVX2 register (two SSE ones in the baseline clone); unaligned loads allowed */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONED __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONED
#endif

/* out[0:n] += x * v[0:n] */
static inline void axpy(float *restrict out, float x, const float *restrict v, int n) {
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        *(lanes *)(out + k) += x * *(const lanes *)(v + k);
    for (; k < n; k++)
        out[k] += x * v[k];
}

static inline float dot(const float *restrict x, const float *restrict y, int n) {
    lanes acc = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        acc += *(const lanes *)(x + k) * *(const lanes *)(y + k);
    float sum = 0.0f;
    for (int j = 0; j < LANES; j++)
        sum += acc[j];
    for (; k < n; k++)
        sum += x[k] * y[k];
    return sum;
}

/* A rank group's bags: value v of the group's bags has distinct key index[v]; key u is active
   when hit[u], at row pos[u] of A. Bag s (table s / batch) holds values [offsets[s], next). */
typedef struct {
    const int64_t *pos, *index, *offsets;
    const uint8_t *hit;
    Py_ssize_t nnz, keys;
    int64_t rows; /* of A */
    int tables, batch, rank, dim;
    float scale;
} Bags;

static inline Py_ssize_t bag_end(const Bags *g, Py_ssize_t s) {
    return s + 1 < (Py_ssize_t)g->tables * g->batch ? g->offsets[s + 1] : g->nnz;
}

/* The A row of value v, if any: fetched PREFETCH values ahead, the random rows' cache misses
   overlap instead of waiting one by one. */
static inline void prefetch_row(const Bags *g, Py_ssize_t v, const float *a) {
    if (v < g->nnz && g->hit[g->index[v]])
        __builtin_prefetch(a + (size_t)g->pos[g->index[v]] * g->rank);
}

CLONED
static void forward(const Bags *g, const float *restrict a, const float *restrict b,
                    float *restrict delta, float *restrict sums) {
    int r = g->rank, d = g->dim;
    float sum[MAX_RANK];
    for (Py_ssize_t s = 0; s < (Py_ssize_t)g->tables * g->batch; s++) {
        const float *b_t = b + (size_t)(s / g->batch) * r * d;
        float *out = delta + (size_t)s * d;
        memset(sum, 0, sizeof(float) * (size_t)r);
        int any = 0;
        for (Py_ssize_t v = g->offsets[s]; v < bag_end(g, s); v++) {
            prefetch_row(g, v + PREFETCH, a);
            int64_t u = g->index[v];
            if (!g->hit[u])
                continue;
            axpy(sum, 1.0f, a + (size_t)g->pos[u] * r, r);
            any = 1;
        }
        if (sums)
            memcpy(sums + (size_t)s * r, sum, sizeof(float) * (size_t)r);
        memset(out, 0, sizeof(float) * (size_t)d);
        if (!any)
            continue;
        for (int k = 0; k < r; k++)
            axpy(out, sum[k], b_t + (size_t)k * d, d);
        if (g->scale != 1.0f)
            for (int j = 0; j < d; j++)
                out[j] *= g->scale;
    }
}

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(x[i]) != 0;
    return ok;
}

/* gram (d, d) += x0ᵀ x0 + x1ᵀ x1 + x2ᵀ x2 + x3ᵀ x3 for four rows x of d: each row of the Gram
   matrix loaded and stored once for four samples (one at a time, its loads and stores cost more
   than the multiply-adds). */
static inline void gram_add4(float *restrict gram, const float *x0, const float *x1,
                             const float *x2, const float *x3, int d) {
    for (int j = 0; j < d; j++) {
        float *row = gram + (size_t)j * d, c0 = x0[j], c1 = x1[j], c2 = x2[j], c3 = x3[j];
        int k = 0;
        for (; k + LANES <= d; k += LANES)
            *(lanes *)(row + k) += c0 * *(const lanes *)(x0 + k) + c1 * *(const lanes *)(x1 + k) +
                                   c2 * *(const lanes *)(x2 + k) + c3 * *(const lanes *)(x3 + k);
        for (; k < d; k++)
            row[k] += c0 * x0[k] + c1 * x1[k] + c2 * x2[k] + c3 * x3[k];
    }
}

/* gram (d, d) = the sum of xᵀ x over the batch rows x of one table's gradient (stride_b apart). */
static inline void gram_of(float *restrict gram, const float *grad, Py_ssize_t stride_b, int batch,
                           int d) {
    int i = 0;
    for (; i + 4 <= batch; i += 4) {
        const float *x = grad + i * stride_b;
        gram_add4(gram, x, x + stride_b, x + 2 * stride_b, x + 3 * stride_b, d);
    }
    for (; i < batch; i++)
        for (int j = 0; j < d; j++)
            axpy(gram + (size_t)j * d, grad[i * stride_b + j], grad + i * stride_b, d);
}

/* grad (T, B, D) with strides (stride_t, stride_b, 1). Returns 1 if finite (see the header). */
CLONED
static int backward(const Bags *g, const float *restrict b, const float *restrict grad,
                    Py_ssize_t stride_t, Py_ssize_t stride_b, const float *restrict sums,
                    float *restrict row_grad, float *restrict b_grad, float *restrict grams) {
    int r = g->rank, d = g->dim, finite = 1;
    float bag_grad[MAX_RANK];
    memset(row_grad, 0, sizeof(float) * (size_t)g->keys * r);
    memset(b_grad, 0, sizeof(float) * (size_t)g->tables * r * d);
    memset(grams, 0, sizeof(float) * (size_t)g->tables * d * d);
    for (int t = 0; t < g->tables; t++) {
        const float *b_t = b + (size_t)t * r * d;
        float *b_grad_t = b_grad + (size_t)t * r * d;
        gram_of(grams + (size_t)t * d * d, grad + t * stride_t, stride_b, g->batch, d);
        for (int i = 0; i < g->batch; i++) {
            Py_ssize_t s = (Py_ssize_t)t * g->batch + i;
            const float *out_grad = grad + t * stride_t + i * stride_b;
            for (int k = 0; k < r; k++) {
                bag_grad[k] = g->scale * dot(out_grad, b_t + (size_t)k * d, d);
                finite &= isfinite(bag_grad[k]) != 0;
            }
            const float *sum = sums + (size_t)s * r;
            for (int k = 0; k < r; k++)
                if (sum[k] != 0.0f)
                    axpy(b_grad_t + (size_t)k * d, g->scale * sum[k], out_grad, d);
            for (Py_ssize_t v = g->offsets[s]; v < bag_end(g, s); v++) {
                int64_t u = g->index[v];
                if (g->hit[u])
                    axpy(row_grad + (size_t)u * r, 1.0f, bag_grad, r);
            }
        }
    }
    return finite && all_finite(b_grad, (size_t)g->tables * r * d);
}

/* Row-wise Adagrad: accum[row] += mean(grad²); row -= lr * grad / (sqrt(accum[row]) + eps). */
static void rowwise_adagrad(const Bags *g, float *restrict a, float *restrict accum,
                            const float *restrict row_grad, float lr, float eps) {
    int r = g->rank;
    for (Py_ssize_t u = 0; u < g->keys; u++) {
        Py_ssize_t ahead = u + PREFETCH;
        if (ahead < g->keys && g->hit[ahead]) {
            __builtin_prefetch(a + (size_t)g->pos[ahead] * r, 1);
            __builtin_prefetch(accum + g->pos[ahead], 1);
        }
        if (!g->hit[u])
            continue;
        const float *grad = row_grad + (size_t)u * r;
        float *row = a + (size_t)g->pos[u] * r;
        float acc = accum[g->pos[u]] + dot(grad, grad, r) / (float)r;
        accum[g->pos[u]] = acc;
        float denom = sqrtf(acc) + eps;
        for (int k = 0; k < r; k++)
            row[k] += grad[k] / denom * -lr;
    }
}

typedef struct {
    float lr, beta1, beta2, eps;
} Adam;

/* Adam on n parameters at step `step` (from 1), as factor_optim.adam_. */
static void adam(const Adam *o, float *restrict p, const float *restrict grad, float *restrict m,
                 float *restrict v, size_t n, int64_t step) {
    float bias1 = 1.0f - powf(o->beta1, (float)step), bias2 = 1.0f - powf(o->beta2, (float)step);
    for (size_t i = 0; i < n; i++) {
        m[i] = m[i] * o->beta1 + grad[i] * (1.0f - o->beta1);
        v[i] = v[i] * o->beta2 + grad[i] * grad[i] * (1.0f - o->beta2);
        p[i] += -o->lr * ((m[i] / bias1) / (sqrtf(v[i] / bias2) + o->eps));
    }
}

/* 0 when the bags index only within their arrays: bags start in order within the values,
   values name keys < keys, active keys rows of A. */
static int bags_in_range(const Bags *g) {
    Py_ssize_t bags = (Py_ssize_t)g->tables * g->batch, previous = 0;
    for (Py_ssize_t s = 0; s < bags; s++) {
        if (g->offsets[s] < previous || g->offsets[s] > g->nnz)
            return -1;
        previous = g->offsets[s];
    }
    if (bags && g->offsets[0] != 0)
        return -1;
    for (Py_ssize_t v = 0; v < g->nnz; v++)
        if ((uint64_t)g->index[v] >= (uint64_t)g->keys)
            return -1;
    for (Py_ssize_t u = 0; u < g->keys; u++)
        if (g->hit[u] && (uint64_t)g->pos[u] >= (uint64_t)g->rows)
            return -1;
    return 0;
}

static int parse_bags(PyObject *spec, Bags *g) {
    /* (pos, hit, index, offsets, nnz, keys, rows, tables, batch, rank, dim, scale) */
    PyObject *pos, *hit, *index, *offsets;
    long long rows;
    double scale;
    if (!PyArg_ParseTuple(spec, "OOOOnnLiiiid", &pos, &hit, &index, &offsets, &g->nnz, &g->keys,
                          &rows, &g->tables, &g->batch, &g->rank, &g->dim, &scale))
        return -1;
    g->rows = rows;
    g->pos = PyLong_AsVoidPtr(pos);
    g->hit = PyLong_AsVoidPtr(hit);
    g->index = PyLong_AsVoidPtr(index);
    g->offsets = PyLong_AsVoidPtr(offsets);
    g->scale = (float)scale;
    if (PyErr_Occurred())
        return -1;
    if (g->rank < 1 || g->rank > MAX_RANK || g->dim < 1 || g->tables < 0 || g->batch < 0 ||
        g->nnz < 0 || g->keys < 0) {
        PyErr_Format(PyExc_ValueError,
                     "bags: rank must be in [1, %d], dim >= 1, counts >= 0", MAX_RANK);
        return -1;
    }
    if (bags_in_range(g) < 0) {
        PyErr_SetString(PyExc_IndexError, "bags: an offset, key index or row is out of range");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(lora_forward_doc,
             "lora_forward(bags, a_ptr, b_ptr, delta_ptr, sums_ptr)\n\n"
             "bags: (pos_ptr, hit_ptr, index_ptr, offsets_ptr, nnz, keys, rows, tables, batch,\n"
             "rank, dim, scale): key u (of `keys`) at row pos[u] (int64) of A (rows, rank) when\n"
             "hit[u] (bool), value\n"
             "v of key index[v] (int64), bag s starting at offsets[s] (int64, tables * batch).\n"
             "delta (tables, batch, dim) float32 = scale * (sum of the bag's active A rows) @ B_t,\n"
             "A and B (tables, rank, dim) float32, all contiguous; with sums_ptr != 0\n"
             "the sums (tables * batch, rank) are written there too.");

static PyObject *lora_forward(PyObject *self, PyObject *args) {
    PyObject *spec, *a_obj, *b_obj, *delta_obj, *sums_obj;
    Bags g;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOO", &PyTuple_Type, &spec, &a_obj, &b_obj, &delta_obj,
                          &sums_obj) ||
        parse_bags(spec, &g) < 0)
        return NULL;
    const float *a = PyLong_AsVoidPtr(a_obj), *b = PyLong_AsVoidPtr(b_obj);
    float *delta = PyLong_AsVoidPtr(delta_obj), *sums = PyLong_AsVoidPtr(sums_obj);
    if (PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    forward(&g, a, b, delta, sums);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(lora_backward_doc,
             "lora_backward(bags, b_ptr, grad_ptr, stride_t, stride_b, sums_ptr, row_grad_ptr,\n"
             "              b_grad_ptr, grams_ptr) -> bool\n\n"
             "From grad (tables, batch, dim) float32 with strides (stride_t, stride_b, 1), the\n"
             "deltas' gradient: row_grad (keys, rank) = each active key's sum over its values of\n"
             "scale * grad[bag] @ B_tᵀ, b_grad (tables, rank, dim) = scale * sumsᵀ grad, grams\n"
             "(tables, dim, dim) = gradᵀ grad; all written, not added. False when a bag's\n"
             "scale * grad @ B_tᵀ or B's gradient is not finite.");

static PyObject *lora_backward(PyObject *self, PyObject *args) {
    PyObject *spec, *b_obj, *grad_obj, *sums_obj, *row_grad_obj, *b_grad_obj, *grams_obj;
    Py_ssize_t stride_t, stride_b;
    Bags g;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOnnOOOO", &PyTuple_Type, &spec, &b_obj, &grad_obj,
                          &stride_t, &stride_b, &sums_obj, &row_grad_obj, &b_grad_obj,
                          &grams_obj) ||
        parse_bags(spec, &g) < 0)
        return NULL;
    const float *b = PyLong_AsVoidPtr(b_obj), *grad = PyLong_AsVoidPtr(grad_obj);
    const float *sums = PyLong_AsVoidPtr(sums_obj);
    float *row_grad = PyLong_AsVoidPtr(row_grad_obj), *b_grad = PyLong_AsVoidPtr(b_grad_obj);
    float *grams = PyLong_AsVoidPtr(grams_obj);
    if (PyErr_Occurred())
        return NULL;
    int finite;
    Py_BEGIN_ALLOW_THREADS;
    finite = backward(&g, b, grad, stride_t, stride_b, sums, row_grad, b_grad, grams);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(finite);
}

PyDoc_STRVAR(lora_step_doc,
             "lora_step(bags, a_ptr, accum_ptr, row_grad_ptr, lr_a, eps_a, b_ptr, b_grad_ptr,\n"
             "          m_ptr, v_ptr, steps, lr_b, beta1, beta2, eps_b)\n\n"
             "Row-wise Adagrad on the active keys' rows of A (accum (rows,) float32) with their\n"
             "row_grad, then Adam on B_t, its moments m_t, v_t with b_grad_t for each table t\n"
             "whose steps[t] (a tuple, one int per table) is >= 1 (its Adam step count).");

static PyObject *lora_step(PyObject *self, PyObject *args) {
    PyObject *spec, *a_obj, *accum_obj, *row_grad_obj, *b_obj, *b_grad_obj, *m_obj, *v_obj;
    PyObject *steps_obj;
    float lr_a, eps_a;
    Adam o;
    Bags g;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOffOOOOO!ffff", &PyTuple_Type, &spec, &a_obj, &accum_obj,
                          &row_grad_obj, &lr_a, &eps_a, &b_obj, &b_grad_obj, &m_obj, &v_obj,
                          &PyTuple_Type, &steps_obj, &o.lr, &o.beta1, &o.beta2, &o.eps) ||
        parse_bags(spec, &g) < 0)
        return NULL;
    if (PyTuple_GET_SIZE(steps_obj) != g.tables) {
        PyErr_SetString(PyExc_ValueError, "steps: one per table");
        return NULL;
    }
    int64_t *steps = malloc(sizeof(*steps) * (size_t)(g.tables ? g.tables : 1));
    if (!steps)
        return PyErr_NoMemory();
    for (int t = 0; t < g.tables; t++)
        steps[t] = PyLong_AsLongLong(PyTuple_GET_ITEM(steps_obj, t));
    float *a = PyLong_AsVoidPtr(a_obj), *accum = PyLong_AsVoidPtr(accum_obj);
    const float *row_grad = PyLong_AsVoidPtr(row_grad_obj);
    float *b = PyLong_AsVoidPtr(b_obj), *m = PyLong_AsVoidPtr(m_obj), *v = PyLong_AsVoidPtr(v_obj);
    const float *b_grad = PyLong_AsVoidPtr(b_grad_obj);
    if (PyErr_Occurred()) {
        free(steps);
        return NULL;
    }
    size_t size = (size_t)g.rank * g.dim;
    Py_BEGIN_ALLOW_THREADS;
    rowwise_adagrad(&g, a, accum, row_grad, lr_a, eps_a);
    for (int t = 0; t < g.tables; t++)
        if (steps[t] >= 1)
            adam(&o, b + t * size, b_grad + t * size, m + t * size, v + t * size, size, steps[t]);
    Py_END_ALLOW_THREADS;
    free(steps);
    Py_RETURN_NONE;
}

/* One table of the cluster's step: its values [0, nnz) (distinct key inverse[v]), its bags,
   and the rows of its distinct keys [first, last) (row = key - shift). */
typedef struct {
    float *weight, *state;
    const int64_t *offsets;
    Py_ssize_t first, last, values, nnz;
    int64_t rows, shift;
} Table;

/* row_grad[u] = sum over values v of key u of grad[bag of v, feature]. */
CLONED
static void gather_rows(const Table *table, int feature, const int64_t *inverse,
                        const float *restrict grad, int batch, int features, int dim,
                        float *restrict row_grad) {
    for (int s = 0; s < batch; s++) {
        const float *bag_grad = grad + ((size_t)s * features + feature) * dim;
        Py_ssize_t end = s + 1 < batch ? table->offsets[s + 1] : table->nnz;
        for (Py_ssize_t v = table->offsets[s]; v < end; v++)
            axpy(row_grad + (size_t)inverse[table->values + v] * dim, 1.0f, bag_grad, dim);
    }
}

/* SGD (state NULL): row -= lr * g. Adagrad: state += g²; row -= lr * g / (sqrt(state) + eps). */
CLONED
static void apply_rows(const Table *table, const int64_t *keys, const float *restrict row_grad,
                       int dim, float lr, float eps) {
    for (Py_ssize_t u = table->first; u < table->last; u++) {
        size_t row = (size_t)(keys[u] - table->shift) * dim;
        const float *grad = row_grad + (size_t)u * dim;
        float *weight = table->weight + row;
        if (!table->state) {
            axpy(weight, -lr, grad, dim);
            continue;
        }
        float *state = table->state + row;
        for (int j = 0; j < dim; j++) {
            state[j] += grad[j] * grad[j];
            weight[j] += -lr * (grad[j] / (sqrtf(state[j]) + eps));
        }
    }
}

static int parse_tables(PyObject *specs, Table *tables, Py_ssize_t count, Py_ssize_t keys) {
    for (Py_ssize_t f = 0; f < count; f++) {
        PyObject *weight, *state, *offsets;
        Table *t = &tables[f];
        long long rows, shift;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs, f), "OOLOnnnnL", &weight, &state, &rows,
                              &offsets, &t->values, &t->nnz, &t->first, &t->last, &shift))
            return -1;
        t->weight = PyLong_AsVoidPtr(weight);
        t->state = PyLong_AsVoidPtr(state);
        t->offsets = PyLong_AsVoidPtr(offsets);
        t->rows = rows, t->shift = shift;
        if (PyErr_Occurred())
            return -1;
        if (t->first < 0 || t->first > t->last || t->last > keys || t->values < 0 || t->nnz < 0) {
            PyErr_SetString(PyExc_ValueError, "tables: key or value range out of bounds");
            return -1;
        }
    }
    return 0;
}

/* 1 when every key of every table maps to a row of its table. */
static int rows_in_range(const Table *tables, Py_ssize_t count, const int64_t *keys) {
    for (Py_ssize_t f = 0; f < count; f++)
        for (Py_ssize_t u = tables[f].first; u < tables[f].last; u++)
            if ((uint64_t)(keys[u] - tables[f].shift) >= (uint64_t)tables[f].rows)
                return 0;
    return 1;
}

PyDoc_STRVAR(sparse_step_doc,
             "sparse_step(tables, keys_ptr, n_keys, inverse_ptr, grad_ptr, batch, dim, lr, eps,\n"
             "            row_grad_ptr, norms_ptr) -> bool\n\n"
             "tables: for feature f, (weight_ptr, state_ptr or 0, rows, offsets_ptr, first_value,\n"
             "nnz, first_key, last_key, key_shift): weight (rows, dim) float32, state its Adagrad\n"
             "sums (0: SGD), offsets (batch,) int64 bag starts into its nnz values, which are\n"
             "values [first_value, first_value + nnz) of inverse (int64: each value's distinct\n"
             "key); its distinct keys are keys[first_key:last_key] (int64), row = key - key_shift.\n"
             "grad (batch, len(tables), dim) float32: the pooled embeddings' gradient. Sums each\n"
             "key's gradient into row_grad (n_keys, dim), its L2 norm into norms (n_keys,); if all\n"
             "are finite, applies the step to the rows and returns True, else changes nothing.");

static PyObject *sparse_step(PyObject *self, PyObject *args) {
    PyObject *specs, *keys_obj, *inverse_obj, *grad_obj, *row_grad_obj, *norms_obj;
    Py_ssize_t n_keys;
    int batch, dim;
    float lr, eps;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OnOOiiffOO", &PyTuple_Type, &specs, &keys_obj, &n_keys,
                          &inverse_obj, &grad_obj, &batch, &dim, &lr, &eps, &row_grad_obj,
                          &norms_obj))
        return NULL;
    const int64_t *keys = PyLong_AsVoidPtr(keys_obj), *inverse = PyLong_AsVoidPtr(inverse_obj);
    const float *grad = PyLong_AsVoidPtr(grad_obj);
    float *row_grad = PyLong_AsVoidPtr(row_grad_obj), *norms = PyLong_AsVoidPtr(norms_obj);
    if (PyErr_Occurred())
        return NULL;
    if (dim < 1 || batch < 0 || n_keys < 0) {
        PyErr_SetString(PyExc_ValueError, "dim must be >= 1, batch and n_keys >= 0");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(specs);
    Table *tables = malloc(sizeof(*tables) * (size_t)(count ? count : 1));
    if (!tables)
        return PyErr_NoMemory();
    if (parse_tables(specs, tables, count, n_keys) < 0) {
        free(tables);
        return NULL;
    }
    if (!rows_in_range(tables, count, keys)) {
        free(tables);
        PyErr_SetString(PyExc_IndexError, "sparse_step: a key maps outside its table");
        return NULL;
    }
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS;
    memset(row_grad, 0, sizeof(float) * (size_t)n_keys * dim);
    for (Py_ssize_t f = 0; f < count; f++)
        gather_rows(&tables[f], (int)f, inverse, grad, batch, (int)count, dim, row_grad);
    for (Py_ssize_t u = 0; u < n_keys; u++) {
        const float *row = row_grad + (size_t)u * dim;
        norms[u] = sqrtf(dot(row, row, dim));
        finite &= all_finite(row, (size_t)dim);
    }
    if (finite)
        for (Py_ssize_t f = 0; f < count; f++)
            apply_rows(&tables[f], keys, row_grad, dim, lr, eps);
    Py_END_ALLOW_THREADS;
    free(tables);
    return PyBool_FromLong(finite);
}

static PyMethodDef methods[] = {
    {"lora_forward", lora_forward, METH_VARARGS, lora_forward_doc},
    {"lora_backward", lora_backward, METH_VARARGS, lora_backward_doc},
    {"lora_step", lora_step, METH_VARARGS, lora_step_doc},
    {"sparse_step", sparse_step, METH_VARARGS, sparse_step_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_training_kernel",
    .m_doc = "The trainers' fused low-rank correction and sparse row updates "
             "(_training_kernel.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__training_kernel(void) { return PyModule_Create(&module); }
