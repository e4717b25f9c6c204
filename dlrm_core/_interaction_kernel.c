/* The DLRM's pairwise dot interaction (dlrm_core.model.InteractionArch), forward and backward.

Per sample b, the F + 1 vectors x_0 = dense[b] (D), x_1..x_F = sparse[b, 0..F-1] (D each):
  forward   out[b] = [x_0, x_i . x_j for 0 <= i < j <= F in row-major order], (B, D + P),
            P = (F + 1) F / 2;
  backward  from the output's gradient g[b] (D + P): with G the symmetric (F + 1)^2 matrix of
            the pairs' gradients (zero diagonal), dx = G @ X, and dense's gradient also gets
            g[b, 0:D] (the copied dense vector); dense's is skipped when no one needs it (a
            frozen bottom MLP whose output was kept).
With torch ops this is cat, bmm, flatten, index_select and cat, and their backward (index_select's
backward, a scatter into the (F + 1)^2 matrix, is most of it). Here, per sample: the forward takes
three rows i at a time against up to 32 columns j of the transposed sample (dot_tile), the
backward four rows of G @ X at a time over 16 dims (grad_tile); their sums stay in registers as
independent FMA chains, and row i's dots land contiguous in the output. Small samples (up to 16
rows of 8, 16, 24 or 32 dims: the MovieLens and synthetic models) take a path of their own
(small_forward, small_backward): at 8 features of 16 dims, batch 512, forward 75 -> 26 us and
the backward without dense's gradient 48 -> 31 us (thread time; its bits unchanged).

The GIL is released while they run. The Python side (interaction.py) validates dtypes, shapes
and contiguity and passes data pointers.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define BLOCK 4 /* vectors of j per forward block: 32 dots kept in registers */
/* 8 floats: one AVX2 register (two SSE ones in the baseline clone) */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONED __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONED
#endif

static inline Py_ssize_t round_up(Py_ssize_t x) { return (x + LANES - 1) / LANES * LANES; }

/* Working space for one call, zero-padded to whole vectors: the sample x (n rows of dpad),
   its transpose xt (dim rows of tpad, tpad >= every block's end) and the pairs' gradients as a
   full matrix g (n x n). */
typedef struct {
    float *x, *xt, *g;
    Py_ssize_t n, dim, dpad, tpad;
} Scratch;

static int scratch_alloc(Scratch *s, Py_ssize_t n, Py_ssize_t dim) {
    s->n = n, s->dim = dim, s->dpad = round_up(dim), s->tpad = round_up(n) + BLOCK * LANES;
    s->x = calloc((size_t)(n * s->dpad), sizeof(float));
    s->xt = calloc((size_t)(dim * s->tpad), sizeof(float));
    s->g = malloc((size_t)(n * n) * sizeof(float));
    if (!s->x || !s->xt || !s->g) {
        free(s->x), free(s->xt), free(s->g);
        return -1;
    }
    return 0;
}

static void scratch_free(Scratch *s) { free(s->x), free(s->xt), free(s->g); }

/* x = [dense row, the sample's sparse rows], each row padded to dpad (the padding stays 0) */
static inline void load_sample(Scratch *s, const float *dense, const float *sparse) {
    size_t row = (size_t)s->dim * sizeof(float);
    memcpy(s->x, dense, row);
    if (s->dpad == s->dim) /* unpadded: one copy */
        memcpy(s->x + s->dim, sparse, row * (size_t)(s->n - 1));
    else
        for (Py_ssize_t i = 1; i < s->n; i++)
            memcpy(s->x + i * s->dpad, sparse + (i - 1) * s->dim, row);
}

#define INLINE static inline __attribute__((always_inline))

#define DOT_ROWS 3

/* Rows i .. i + rows - 1 against j = j0 .. j0 + nv * LANES - 1: dots[r][...] = x_{i+r} . x_j.
   rows and nv are constants where inlined, so that the rows * nv sums stay in registers and
   their FMAs are independent (one chain would wait on the FMA's latency). */
INLINE void dot_tile(const Scratch *s, Py_ssize_t i, Py_ssize_t j0, int rows, int nv,
                     float dots[][BLOCK * LANES]) {
    lanes acc[DOT_ROWS][BLOCK];
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++)
            acc[r][q] = (lanes){0};
    for (Py_ssize_t k = 0; k < s->dim; k++) {
        const float *col = s->xt + k * s->tpad + j0;
        for (int q = 0; q < nv; q++) {
            lanes c = *(const lanes *)(col + q * LANES);
            for (int r = 0; r < rows; r++)
                acc[r][q] += s->x[(i + r) * s->dpad + k] * c;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++)
            *(lanes *)(dots[r] + q * LANES) = acc[r][q];
}

#define DOT_TILE(rows)                                                                         \
    do {                                                                                       \
        switch (nv) {                                                                          \
        case 1: dot_tile(s, i, j0, rows, 1, dots); break;                                      \
        case 2: dot_tile(s, i, j0, rows, 2, dots); break;                                      \
        case 3: dot_tile(s, i, j0, rows, 3, dots); break;                                      \
        default: dot_tile(s, i, j0, rows, BLOCK, dots); break;                                 \
        }                                                                                      \
    } while (0)

/* the dots of rows i .. i + rows - 1 (rows <= DOT_ROWS) into o, the output of row i: row r's
   n - 1 - (i + r) dots x_{i+r} . x_j, j > i + r, follow each other */
INLINE void dots_of_rows(const Scratch *s, Py_ssize_t i, int rows, float *o) {
    for (Py_ssize_t j0 = (i + 1) / LANES * LANES; j0 < s->n; j0 += BLOCK * LANES) {
        float dots[DOT_ROWS][BLOCK * LANES];
        Py_ssize_t to = j0 + BLOCK * LANES < s->n ? j0 + BLOCK * LANES : s->n;
        int nv = (int)((to - j0 + LANES - 1) / LANES);
        switch (rows) {
        case 1: DOT_TILE(1); break;
        case 2: DOT_TILE(2); break;
        default: DOT_TILE(DOT_ROWS); break;
        }
        float *row = o;
        for (int r = 0; r < rows; r++) {
            Py_ssize_t ir = i + r, from = j0 > ir + 1 ? j0 : ir + 1;
            if (to > from)
                memcpy(row + (from - ir - 1), dots[r] + (from - j0),
                       (size_t)(to - from) * sizeof(float));
            row += s->n - 1 - ir;
        }
    }
}

CLONED
static void forward(const float *dense, const float *sparse, float *out, Py_ssize_t batch,
                    Scratch *s) {
    Py_ssize_t n = s->n, dim = s->dim;
    for (Py_ssize_t b = 0; b < batch; b++) {
        float *o = out + b * (dim + n * (n - 1) / 2);
        load_sample(s, dense + b * dim, sparse + b * (n - 1) * dim);
        for (Py_ssize_t k = 0; k < dim; k++)
            for (Py_ssize_t i = 0; i < n; i++)
                s->xt[k * s->tpad + i] = s->x[i * s->dpad + k];
        memcpy(o, dense + b * dim, (size_t)dim * sizeof(float));
        o += dim;
        for (Py_ssize_t i = 0; i + 1 < n; i += DOT_ROWS) {
            /* the last row has no dots of its own */
            int rows = n - 1 - i < DOT_ROWS ? (int)(n - 1 - i) : DOT_ROWS;
            dots_of_rows(s, i, rows, o);
            for (int r = 0; r < rows; r++)
                o += n - 1 - (i + r);
        }
    }
}

#define GRAD_ROWS 4
#define GRAD_BLOCK 2

/* sums[r][0 : nv * LANES] = sum_j g[i + r, j] x_j[k0 : k0 + nv * LANES]; rows and nv are
   constants where inlined (independent sums in registers, as in dot_tile) */
INLINE void grad_tile(const Scratch *s, Py_ssize_t i, Py_ssize_t k0, int rows, int nv,
                      float sums[][GRAD_BLOCK * LANES]) {
    lanes acc[GRAD_ROWS][GRAD_BLOCK];
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++)
            acc[r][q] = (lanes){0};
    for (Py_ssize_t j = 0; j < s->n; j++) {
        const float *xj = s->x + j * s->dpad + k0;
        for (int q = 0; q < nv; q++) {
            lanes c = *(const lanes *)(xj + q * LANES);
            for (int r = 0; r < rows; r++)
                acc[r][q] += s->g[(i + r) * s->n + j] * c;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++)
            *(lanes *)(sums[r] + q * LANES) = acc[r][q];
}

#define GRAD_TILE(rows)                                                                        \
    do {                                                                                       \
        if (nv == 1)                                                                           \
            grad_tile(s, i, k0, rows, 1, sums);                                                \
        else                                                                                   \
            grad_tile(s, i, k0, rows, GRAD_BLOCK, sums);                                       \
    } while (0)

/* rows i .. i + rows - 1 of dx = G @ X into dx[r] (dim each); start (dim), when given, is
   added to row 0's */
INLINE void grad_of_rows(const Scratch *s, Py_ssize_t i, int rows, const float *start,
                         float *dx[GRAD_ROWS]) {
    for (Py_ssize_t k0 = 0; k0 < s->dim; k0 += GRAD_BLOCK * LANES) {
        float sums[GRAD_ROWS][GRAD_BLOCK * LANES];
        Py_ssize_t m = s->dim - k0 < GRAD_BLOCK * LANES ? s->dim - k0 : GRAD_BLOCK * LANES;
        int nv = (int)((m + LANES - 1) / LANES);
        switch (rows) {
        case 1: GRAD_TILE(1); break;
        case 2: GRAD_TILE(2); break;
        case 3: GRAD_TILE(3); break;
        default: GRAD_TILE(GRAD_ROWS); break;
        }
        for (int r = 0; r < rows; r++)
            for (Py_ssize_t k = 0; k < m; k++)
                dx[r][k0 + k] = sums[r][k] + (start && r == 0 ? start[k0 + k] : 0.0f);
    }
}

/* g (n x n) = the pairs' gradients gp as a symmetric matrix, zero diagonal; row i of the upper
   triangle starts at gp[i (n - 1) - i (i - 1) / 2] */
static inline void load_pair_grads(const Scratch *s, const float *gp) {
    Py_ssize_t n = s->n;
    for (Py_ssize_t i = 0; i < n; i++) {
        float *gi = s->g + i * n;
        for (Py_ssize_t j = 0; j < i; j++) /* rows j < i are filled */
            gi[j] = s->g[j * n + i];
        gi[i] = 0.0f;
        memcpy(gi + i + 1, gp + i * (n - 1) - i * (i - 1) / 2, (size_t)(n - 1 - i) * sizeof(float));
    }
}

CLONED
static void backward(const float *dense, const float *sparse, const float *grad,
                     float *grad_dense, float *grad_sparse, Py_ssize_t batch, Scratch *s) {
    Py_ssize_t n = s->n, dim = s->dim, width = dim + n * (n - 1) / 2;
    /* without grad_dense, row 0 (dense's) is skipped: at 8 features the 8 sparse rows are then
       two tiles of four instead of three tiles for nine rows */
    Py_ssize_t first = grad_dense ? 0 : 1;
    for (Py_ssize_t b = 0; b < batch; b++) {
        const float *gp = grad + b * width + dim;
        load_sample(s, dense + b * dim, sparse + b * (n - 1) * dim);
        load_pair_grads(s, gp);
        for (Py_ssize_t i = first; i < n; i += GRAD_ROWS) {
            int rows = n - i < GRAD_ROWS ? (int)(n - i) : GRAD_ROWS;
            float *dx[GRAD_ROWS];
            for (int r = 0; r < rows; r++) /* row 0 is dense's, row i the (i - 1)th feature's */
                dx[r] = i + r ? grad_sparse + (b * (n - 1) + i + r - 1) * dim : grad_dense + b * dim;
            grad_of_rows(s, i, rows, i ? NULL : grad + b * width, dx);
        }
    }
}

/* Small samples, dim a multiple of LANES up to SMALL_VECS * LANES and n <= SMALL_N rows (the
   MovieLens and synthetic models: 9 and 3 rows of 16): the tiles above then compute mostly
   padding, and copying and transposing each sample costs more than its dots. Here the rows are
   read where they lie. The forward takes eight pairs at a time, each pair's products summed
   into one vector (lanes over dims), and the eight vectors' lanes summed at once (a transpose
   by shuffles), so a dot's terms add in another order than in dot_tile (within float
   rounding). The backward sums over j in the same order and with the same operations as
   grad_tile, so its bits are the same, four rows at a time (two at 24 and 32 dims) as
   independent chains: at 8 features of 16 dims, batch 512, 63 -> 42 us under load. */
#define SMALL_N 16
#define SMALL_VECS 4
#define SMALL_PAIRS (SMALL_N * (SMALL_N - 1) / 2)

typedef int32_t lane_index __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline int small_shape(Py_ssize_t n, Py_ssize_t dim) {
    return LANES == 8 && n <= SMALL_N && dim % LANES == 0 && dim <= SMALL_VECS * LANES;
}

/* *acc = the lanes of x . y's products, nv vectors each (vectors pass by pointer: a vector
   return value's ABI differs between the clones) */
INLINE void pair_products(lanes *acc, const float *x, const float *y, int nv) {
    *acc = *(const lanes *)x * *(const lanes *)y;
    for (int q = 1; q < nv; q++)
        *acc += *(const lanes *)(x + q * LANES) * *(const lanes *)(y + q * LANES);
}

/* lane q of *sums: the sum of v[q]'s lanes (three rounds of pairwise sums) */
INLINE void sum_each(lanes *sums, const lanes v[LANES]) {
    const lane_index even = {0, 8, 2, 10, 4, 12, 6, 14}, odd = {1, 9, 3, 11, 5, 13, 7, 15};
    const lane_index lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const lane_index lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
    lanes a[4], b[2];
    for (int q = 0; q < 4; q++)
        a[q] = __builtin_shuffle(v[2 * q], v[2 * q + 1], even) +
               __builtin_shuffle(v[2 * q], v[2 * q + 1], odd);
    for (int q = 0; q < 2; q++)
        b[q] = __builtin_shuffle(a[2 * q], a[2 * q + 1], lo2) +
               __builtin_shuffle(a[2 * q], a[2 * q + 1], hi2);
    *sums = __builtin_shuffle(b[0], b[1], lo4) + __builtin_shuffle(b[0], b[1], hi4);
}

INLINE void small_forward_nv(const float *dense, const float *sparse, float *out,
                             Py_ssize_t batch, Py_ssize_t n, int nv, const int8_t pair[][2]) {
    Py_ssize_t dim = nv * LANES, npairs = n * (n - 1) / 2;
    for (Py_ssize_t b = 0; b < batch; b++) {
        const float *row[SMALL_N];
        row[0] = dense + b * dim;
        for (Py_ssize_t i = 1; i < n; i++)
            row[i] = sparse + (b * (n - 1) + i - 1) * dim;
        float *o = out + b * (dim + npairs);
        memcpy(o, row[0], (size_t)dim * sizeof(float));
        o += dim;
        for (Py_ssize_t p0 = 0; p0 < npairs; p0 += LANES) {
            int count = npairs - p0 < LANES ? (int)(npairs - p0) : LANES;
            lanes v[LANES];
            for (int q = 0; q < LANES; q++) {
                v[q] = (lanes){0};
                if (q < count)
                    pair_products(&v[q], row[pair[p0 + q][0]], row[pair[p0 + q][1]], nv);
            }
            lanes dots;
            sum_each(&dots, v);
            if (count == LANES)
                *(lanes *)(o + p0) = dots;
            else
                memcpy(o + p0, &dots, (size_t)count * sizeof(float));
        }
    }
}

CLONED
static void small_forward(const float *dense, const float *sparse, float *out, Py_ssize_t batch,
                          Py_ssize_t n, Py_ssize_t dim) {
    int8_t pair[SMALL_PAIRS][2];
    Py_ssize_t p = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            pair[p][0] = (int8_t)i, pair[p][1] = (int8_t)j, p++;
    switch (dim / LANES) {
    case 1: small_forward_nv(dense, sparse, out, batch, n, 1, pair); break;
    case 2: small_forward_nv(dense, sparse, out, batch, n, 2, pair); break;
    case 3: small_forward_nv(dense, sparse, out, batch, n, 3, pair); break;
    default: small_forward_nv(dense, sparse, out, batch, n, SMALL_VECS, pair); break;
    }
}

/* Rows i0 .. i0 + rows - 1 of dx = G @ X of one sample into dx[r]: dx_i = sum_j G_ij x_j in j
   order (G_ii = 0 taken too, as grad_tile does), plus `start` (the dense copy's gradient) for
   row 0 when given; rows and nv constants where inlined, so that the rows' sums are independent
   chains in registers (one row at a time waits on its FMAs) */
INLINE void small_grad_rows(const float *const *row, const float *gp, Py_ssize_t n,
                            Py_ssize_t i0, int rows, int nv, const int16_t *at,
                            float *const *dx, const float *start) {
    lanes acc[4][SMALL_VECS];
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++)
            acc[r][q] = (lanes){0};
    for (Py_ssize_t j = 0; j < n; j++) {
        lanes x[SMALL_VECS];
        for (int q = 0; q < nv; q++)
            x[q] = *(const lanes *)(row[j] + q * LANES);
        for (int r = 0; r < rows; r++) {
            float g = i0 + r == j ? 0.0f : gp[at[(i0 + r) * n + j]];
            for (int q = 0; q < nv; q++)
                acc[r][q] += g * x[q];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < nv; q++) {
            if (start && i0 + r == 0)
                acc[r][q] += *(const lanes *)(start + q * LANES);
            *(lanes *)(dx[r] + q * LANES) = acc[r][q];
        }
}

#define SMALL_ROWS(nv) ((nv) <= 2 ? 4 : 2) /* rows a block: rows * nv sums in registers */

/* grad_of_rows for every row from `first`, rows read in place, SMALL_ROWS(nv) rows at a time
   (small_grad_rows), plus the dense copy's gradient for row 0 */
INLINE void small_backward_nv(const float *dense, const float *sparse, const float *grad,
                              float *grad_dense, float *grad_sparse, Py_ssize_t batch,
                              Py_ssize_t n, int nv, const int16_t *at) {
    Py_ssize_t dim = nv * LANES, width = dim + n * (n - 1) / 2;
    Py_ssize_t first = grad_dense ? 0 : 1;
    const int block = SMALL_ROWS(nv);
    for (Py_ssize_t b = 0; b < batch; b++) {
        const float *row[SMALL_N], *gp = grad + b * width + dim, *start = NULL;
        float *dx[SMALL_N];
        row[0] = dense + b * dim;
        if (grad_dense)
            dx[0] = grad_dense + b * dim, start = grad + b * width;
        for (Py_ssize_t i = 1; i < n; i++) {
            row[i] = sparse + (b * (n - 1) + i - 1) * dim;
            dx[i] = grad_sparse + (b * (n - 1) + i - 1) * dim;
        }
        for (Py_ssize_t i0 = first; i0 < n; i0 += block) {
            const float *const *x = row;
            float *const *out = dx + i0;
            switch (n - i0 < block ? (int)(n - i0) : block) {
            case 1: small_grad_rows(x, gp, n, i0, 1, nv, at, out, start); break;
            case 2: small_grad_rows(x, gp, n, i0, 2, nv, at, out, start); break;
            case 3: small_grad_rows(x, gp, n, i0, 3, nv, at, out, start); break;
            default: small_grad_rows(x, gp, n, i0, 4, nv, at, out, start); break;
            }
        }
    }
}

CLONED
static void small_backward(const float *dense, const float *sparse, const float *grad,
                           float *grad_dense, float *grad_sparse, Py_ssize_t batch, Py_ssize_t n,
                           Py_ssize_t dim) {
    int16_t at[SMALL_N * SMALL_N]; /* the pair (min(i, j), max(i, j))'s place among the pairs */
    for (Py_ssize_t i = 0, p = 0; i < n; i++) {
        at[i * n + i] = 0;
        for (Py_ssize_t j = i + 1; j < n; j++, p++)
            at[i * n + j] = at[j * n + i] = (int16_t)p;
    }
    switch (dim / LANES) {
    case 1: small_backward_nv(dense, sparse, grad, grad_dense, grad_sparse, batch, n, 1, at); break;
    case 2: small_backward_nv(dense, sparse, grad, grad_dense, grad_sparse, batch, n, 2, at); break;
    case 3: small_backward_nv(dense, sparse, grad, grad_dense, grad_sparse, batch, n, 3, at); break;
    default:
        small_backward_nv(dense, sparse, grad, grad_dense, grad_sparse, batch, n, SMALL_VECS, at);
        break;
    }
}

/* batch >= 0, features >= 1, dim >= 1 and the sizes addressable; n = features + 1 */
static int parse_shape(long long batch, long long features, long long dim, Py_ssize_t *n) {
    if (batch < 0 || features < 1 || dim < 1 || features > (1 << 20) || dim > (1 << 20) ||
        batch > PY_SSIZE_T_MAX / ((features + 1) * (features + 2) / 2 + dim)) {
        PyErr_SetString(PyExc_ValueError,
                        "interaction: batch >= 0, features in [1, 2**20], dim in [1, 2**20]");
        return -1;
    }
    *n = (Py_ssize_t)features + 1;
    return 0;
}

PyDoc_STRVAR(interaction_forward_doc,
             "forward(dense_ptr, sparse_ptr, out_ptr, batch, features, dim)\n\n"
             "dense (batch, dim), sparse (batch, features, dim), out (batch, dim + P) float32,\n"
             "contiguous; P = (features + 1) * features / 2.");

static PyObject *interaction_forward(PyObject *self, PyObject *args) {
    PyObject *dense_obj, *sparse_obj, *out_obj;
    long long batch, features, dim;
    Py_ssize_t n;
    Scratch s;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOLLL", &dense_obj, &sparse_obj, &out_obj, &batch, &features,
                          &dim) ||
        parse_shape(batch, features, dim, &n) < 0)
        return NULL;
    const float *dense = PyLong_AsVoidPtr(dense_obj), *sparse = PyLong_AsVoidPtr(sparse_obj);
    float *out = PyLong_AsVoidPtr(out_obj);
    if (PyErr_Occurred())
        return NULL;
    if (small_shape(n, (Py_ssize_t)dim)) {
        Py_BEGIN_ALLOW_THREADS;
        small_forward(dense, sparse, out, (Py_ssize_t)batch, n, (Py_ssize_t)dim);
        Py_END_ALLOW_THREADS;
        Py_RETURN_NONE;
    }
    if (scratch_alloc(&s, n, (Py_ssize_t)dim) < 0)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS;
    forward(dense, sparse, out, (Py_ssize_t)batch, &s);
    Py_END_ALLOW_THREADS;
    scratch_free(&s);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(interaction_backward_doc,
             "backward(dense_ptr, sparse_ptr, grad_ptr, grad_dense_ptr, grad_sparse_ptr, batch,\n"
             "features, dim)\n\n"
             "The forward's inputs, grad (batch, dim + P) its output's gradient; writes the\n"
             "inputs' gradients grad_dense (batch, dim) and grad_sparse (batch, features, dim).\n"
             "All float32, contiguous; grad_dense_ptr 0 skips dense's gradient.");

static PyObject *interaction_backward(PyObject *self, PyObject *args) {
    PyObject *dense_obj, *sparse_obj, *grad_obj, *gd_obj, *gs_obj;
    long long batch, features, dim;
    Py_ssize_t n;
    Scratch s;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOLLL", &dense_obj, &sparse_obj, &grad_obj, &gd_obj, &gs_obj,
                          &batch, &features, &dim) ||
        parse_shape(batch, features, dim, &n) < 0)
        return NULL;
    const float *dense = PyLong_AsVoidPtr(dense_obj), *sparse = PyLong_AsVoidPtr(sparse_obj);
    const float *grad = PyLong_AsVoidPtr(grad_obj);
    float *grad_dense = PyLong_AsVoidPtr(gd_obj), *grad_sparse = PyLong_AsVoidPtr(gs_obj);
    if (PyErr_Occurred())
        return NULL;
    if (small_shape(n, (Py_ssize_t)dim)) {
        Py_BEGIN_ALLOW_THREADS;
        small_backward(dense, sparse, grad, grad_dense, grad_sparse, (Py_ssize_t)batch, n,
                       (Py_ssize_t)dim);
        Py_END_ALLOW_THREADS;
        Py_RETURN_NONE;
    }
    if (scratch_alloc(&s, n, (Py_ssize_t)dim) < 0)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS;
    backward(dense, sparse, grad, grad_dense, grad_sparse, (Py_ssize_t)batch, &s);
    Py_END_ALLOW_THREADS;
    scratch_free(&s);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", interaction_forward, METH_VARARGS, interaction_forward_doc},
    {"backward", interaction_backward, METH_VARARGS, interaction_backward_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_interaction_kernel",
    .m_doc = "The DLRM's pairwise dot interaction, forward and backward "
             "(_interaction_kernel.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__interaction_kernel(void) { return PyModule_Create(&module); }
