/* The trainers' fused steps, for dlrm_core.live_group (the node's low-rank correction) and
dlrm_core.trainer.FullSparseTrainer (the cluster's sparse embedding rows).

The correction of all the LiveTrainer's rank groups (batch B, dim D; a group: T tables of rank r),
in three calls per step, each looping over the groups (one call, not three per group: the Python
around a call cost more than the call):
  lora_forward   each bag's sum of its active A rows, (that sum) @ B_t * scale added into the
                 table's column of the pooled embeddings (B, F, D) in place, and the (T * B, r)
                 sums kept for B's gradient;
  lora_backward  from the pooled embeddings' gradient G: each bag's dG @ B_tᵀ * scale summed into
                 its keys' rows (A's gradient per distinct key), B's gradient (sums)ᵀ G * scale,
                 and the rank controllers' statistics Gᵀ G (D, D) per table (its upper triangle
                 summed, the lower one mirrored), a member at a time; returns whether A's per-bag
                 gradients and B's gradients are all finite;
  lora_step      row-wise Adagrad on the keys' A rows and Adam on the B of the tables given.
The forward's and backward's sums stay in registers, many independent ones at a time: a bag's
delta as nv vectors over its dims (add_delta), its gradient dG @ B_tᵀ for eight ranks at once
from B_tᵀ (bag_grads), B's gradient for a few ranks over all bags (b_grads). Each number is
summed in the order and with the operations (FMAs as GCC contracts them) of the per-bag loops
they replace, so at dims that are a multiple of 8 (every model here: 16, 64, 128) the bits are
theirs (MovieLens-100k, batch 512: forward 58 -> 32 us, backward 126 -> 66 us, thread time
under load). At other dims a bag gradient's last dim % 8 terms are FMAs where GCC's vectorized
epilogue of the old dot had 4 of them as products and adds (last-bit differences).
The step is its own call because a non-finite gradient skips the whole trainer step: the
trainer checks the backward before any factor changes.
With torch ops this is ~30 ops per group and step, each allocating its output (the embedding
bag, bmm, the hook's bmm, the optimizer's index ops and Adam's elementwise ops).

The cluster's step on its embedding rows, in one call (sparse_step): each distinct row's
gradient summed from its bags' gradients, checked finite, then SGD or Adagrad on the row, with
exactly torch.optim.SGD's and torch.optim.Adagrad's (lr_decay 0, no weight decay) sparse math,
the row's gradient L2 norm reported.

The GIL is released while they run. The Python side (live_group.py, trainer.py) validates
dtypes, shapes and contiguity and passes data pointers; nothing here allocates Python objects or
trusts anything but those pointers. all_finite checks a float32 buffer (a batch's inputs)
for non-finite values.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANK 1024
#define MAX_DIM 4096
#define PREFETCH 16
#define LANES 8
/* 8 floats: one AVX2 register (two SSE ones in the baseline clone); unaligned loads allowed */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));
typedef int32_t lane_mask __attribute__((vector_size(LANES * sizeof(int32_t))));

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

/* A step's bags of all trained tables (members, table-major): value v has distinct key index[v];
   key u is active when hit[u], at row pos[u] of the trainer's row buffers. Member m's bag i is
   bag s = m * batch + i, its values [offsets[s], the next bag's start or nnz). Its delta goes to
   (and its gradient comes from) column features[m] of the pooled embeddings (batch, n_features,
   dim), contiguous. */
typedef struct {
    const int64_t *pos, *index, *offsets, *features;
    const uint8_t *hit;
    Py_ssize_t nnz, keys;
    int members, batch, dim, n_features;
} Batch;

/* One rank group: members [member0, member1), keys [key0, key1), rows [row0, row0 + rows) of the
   buffers held by its A (rows, rank) (row - row0); B, its Adam moments (tables, rank, dim). */
typedef struct {
    Py_ssize_t key0, key1;
    int member0, member1;
    int64_t row0, rows;
    int rank;
    float scale;
    float *a, *b, *b_m, *b_v;
} Group;

static inline Py_ssize_t bag_end(const Batch *x, Py_ssize_t s) {
    return s + 1 < (Py_ssize_t)x->members * x->batch ? x->offsets[s + 1] : x->nnz;
}

/* The A row of value v, if any: fetched PREFETCH values ahead, the random rows' cache misses
   overlap instead of waiting one by one. */
static inline void prefetch_row(const Batch *x, const Group *g, Py_ssize_t v, Py_ssize_t end) {
    if (v < end && x->hit[x->index[v]])
        __builtin_prefetch(g->a + (size_t)(x->pos[x->index[v]] - g->row0) * g->rank);
}

#define INLINE static inline __attribute__((always_inline))
#define CHUNK 4 /* vectors of dims whose sums one pass keeps in registers */

/* Makes x a value of its own (through memory, so any type in either clone): a product computed
   before it is not fused with an addition after it (-ffp-contract would make the two one FMA,
   rounding once where the loops this replaced rounded twice: other bits). */
#define MATERIALIZE(x) __asm__("" : "+m"(x))

/* column[j0 : j0 + nv * LANES] += (sum[0:r] @ B_t) * scale there: the delta's terms added in rank
   order from zero, then scaled, then added, as an axpy per rank into a zeroed row, a scaling and
   an addition did it. nv (<= CHUNK) is a constant where inlined: the sums stay in registers. */
INLINE void add_delta_chunk(float *restrict column, const float *sum, const float *b_t, int r,
                            int d, int j0, float scale, int nv) {
    lanes acc[CHUNK];
    for (int q = 0; q < nv; q++)
        acc[q] = (lanes){0};
    for (int k = 0; k < r; k++)
        for (int q = 0; q < nv; q++)
            acc[q] += sum[k] * *(const lanes *)(b_t + (size_t)k * d + j0 + q * LANES);
    for (int q = 0; q < nv; q++) {
        lanes delta = acc[q]; /* a copy: acc itself stays in registers */
        if (scale != 1.0f) {
            delta *= scale;
            MATERIALIZE(delta);
        }
        *(lanes *)(column + j0 + q * LANES) += delta;
    }
}

/* column[0:d] += (sum[0:r] @ B_t) * scale (see add_delta_chunk) */
INLINE void add_delta(float *restrict column, const float *sum, const float *b_t, int r, int d,
                      float scale) {
    int j0 = 0;
    for (; j0 + CHUNK * LANES <= d; j0 += CHUNK * LANES)
        add_delta_chunk(column, sum, b_t, r, d, j0, scale, CHUNK);
    switch ((d - j0) / LANES) {
    case 3: add_delta_chunk(column, sum, b_t, r, d, j0, scale, 3); break;
    case 2: add_delta_chunk(column, sum, b_t, r, d, j0, scale, 2); break;
    case 1: add_delta_chunk(column, sum, b_t, r, d, j0, scale, 1); break;
    default: break;
    }
    for (int j = d / LANES * LANES; j < d; j++) {
        float delta = 0.0f;
        for (int k = 0; k < r; k++)
            delta += sum[k] * b_t[(size_t)k * d + j];
        if (scale != 1.0f) {
            delta *= scale;
            MATERIALIZE(delta);
        }
        column[j] += delta;
    }
}

/* Each bag's delta scale * (sum of its active A rows) @ B_t added into its column of `out`; with
   `sums`, the (tables * batch, rank) sums kept for B's gradient. */
CLONED
static void forward(const Batch *x, const Group *g, float *restrict out, float *restrict sums) {
    int r = g->rank, d = x->dim;
    float sum[MAX_RANK];
    for (int m = g->member0; m < g->member1; m++) {
        int t = m - g->member0;
        const float *b_t = g->b + (size_t)t * r * d;
        for (int i = 0; i < x->batch; i++) {
            Py_ssize_t s = (Py_ssize_t)m * x->batch + i, end = bag_end(x, s);
            memset(sum, 0, sizeof(float) * (size_t)r);
            int any = 0;
            for (Py_ssize_t v = x->offsets[s]; v < end; v++) {
                prefetch_row(x, g, v + PREFETCH, end);
                int64_t u = x->index[v];
                if (!x->hit[u])
                    continue;
                axpy(sum, 1.0f, g->a + (size_t)(x->pos[u] - g->row0) * r, r);
                any = 1;
            }
            if (sums)
                memcpy(sums + ((size_t)t * x->batch + i) * r, sum, sizeof(float) * (size_t)r);
            if (any)
                add_delta(out + ((size_t)i * x->n_features + x->features[m]) * d, sum, b_t, r, d,
                          g->scale);
        }
    }
}

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(x[i]) != 0;
    return ok;
}

/* gram (d, d) += x0ᵀ x0 + x1ᵀ x1 + x2ᵀ x2 + x3ᵀ x3 for four rows x of d, its upper triangle (and
   the vector of lanes holding the diagonal): each row of the Gram matrix loaded and stored once
   for four samples (one at a time, its loads and stores cost more than the multiply-adds), the
   samples' vectors loaded once for all rows, CHUNK vectors of columns at a time. nv = d / LANES,
   a constant where inlined. */
INLINE void gram_add4(float *restrict gram, const float *x0, const float *x1, const float *x2,
                      const float *x3, int d, int nv) {
    for (int q0 = 0; q0 < nv; q0 += CHUNK) {
        int q1 = q0 + CHUNK < nv ? q0 + CHUNK : nv;
        lanes v0[CHUNK], v1[CHUNK], v2[CHUNK], v3[CHUNK];
        for (int q = q0; q < q1; q++) {
            v0[q - q0] = *(const lanes *)(x0 + q * LANES);
            v1[q - q0] = *(const lanes *)(x1 + q * LANES);
            v2[q - q0] = *(const lanes *)(x2 + q * LANES);
            v3[q - q0] = *(const lanes *)(x3 + q * LANES);
        }
        for (int j = 0; j < q1 * LANES; j++) {
            float *row = gram + (size_t)j * d, c0 = x0[j], c1 = x1[j], c2 = x2[j], c3 = x3[j];
            for (int q = j / LANES > q0 ? j / LANES : q0; q < q1; q++)
                *(lanes *)(row + q * LANES) += c0 * v0[q - q0] + c1 * v1[q - q0] +
                                               c2 * v2[q - q0] + c3 * v3[q - q0];
        }
    }
    for (int j = 0; j < d; j++)
        for (int k = nv * LANES; k < d; k++)
            gram[(size_t)j * d + k] += x0[j] * x0[k] + x1[j] * x1[k] + x2[j] * x2[k] +
                                       x3[j] * x3[k];
}

/* gram (d, d) = the sum of xᵀ x over the batch rows x of one table's gradient (stride_b apart):
   the upper triangle summed, the lower one its mirror (the products are the same: so are the
   sums). nv as gram_add4's. */
INLINE void gram_of(float *restrict gram, const float *grad, Py_ssize_t stride_b, int batch, int d,
                    int nv) {
    int i = 0;
    for (; i + 4 <= batch; i += 4) {
        const float *x = grad + i * stride_b;
        gram_add4(gram, x, x + stride_b, x + 2 * stride_b, x + 3 * stride_b, d, nv);
    }
    for (; i < batch; i++)
        for (int j = 0; j < d; j++) {
            int k = j / LANES * LANES;
            axpy(gram + (size_t)j * d + k, grad[i * stride_b + j], grad + i * stride_b + k, d - k);
        }
    for (int j = 1; j < d; j++)
        for (int k = 0; k < j; k++)
            gram[(size_t)j * d + k] = gram[(size_t)k * d + j];
}

/* bt (d, r8) = B_tᵀ of b_t (r, d), its columns r .. r8 - 1 zero */
INLINE void transpose_b(float *restrict bt, const float *restrict b_t, int r, int r8, int d) {
    for (int j = 0; j < d; j++)
        for (int k = 0; k < r8; k++)
            bt[(size_t)j * r8 + k] = k < r ? b_t[(size_t)k * d + j] : 0.0f;
}

/* bag_grad[0:r8] = (og @ B_tᵀ) * scale from bt = B_tᵀ (d, r8), LANES ranks at a time: rank k's
   terms summed as dot(og, B_t[k], d) sums them (lane j of its vectors of dims, the lanes in
   order, then the tail dims), so the bits are dot's; nv = d / LANES, a constant where inlined.
   The lanes of the first r that are not finite are set in *bad (checked once a member: a lane
   at a time for every bag cost a fifth of the backward). */
INLINE void bag_grads(float *restrict bag_grad, const float *og, const float *bt, int r, int r8,
                      int d, float scale, int nv, lane_mask tail, lane_mask *bad) {
    for (int c = 0; c < r8; c += LANES) {
        lanes part[LANES], sum = {0};
        const float *col = bt + c;
        for (int j = 0; j < LANES; j++)
            part[j] = (lanes){0};
        for (int q = 0; q < nv; q++)
            for (int j = 0; j < LANES; j++, col += r8)
                part[j] += og[q * LANES + j] * *(const lanes *)col;
        for (int j = 0; j < LANES; j++)
            sum += part[j];
        for (int k = nv * LANES; k < d; k++, col += r8)
            sum += og[k] * *(const lanes *)col;
        if (scale != 1.0f) {
            sum *= scale;
            MATERIALIZE(sum);
        }
        *(lanes *)(bag_grad + c) = sum;
        lane_mask nonfinite = (sum - sum) != 0; /* x - x: 0 when finite, else NaN */
        *bad |= c + LANES <= r ? nonfinite : nonfinite & tail;
    }
}

/* One member's bags: its Gram matrix (gram_of) and each bag's gradient of its A rows' sum
   (bag_grads) added into its active keys' rows of row_grad; returns whether all were finite. nv
   as bag_grads'. */
INLINE int member_bags(const Batch *x, const Group *g, int m, const float *grad_m,
                       Py_ssize_t stride_b, const float *bt, float *restrict row_grad,
                       float *restrict grams, int nv) {
    int r = g->rank, r8 = (r + LANES - 1) / LANES * LANES, finite = 1;
    gram_of(grams + (size_t)m * x->dim * x->dim, grad_m, stride_b, x->batch, x->dim, nv);
    float bag_grad[MAX_RANK];
    const lane_mask lane = {0, 1, 2, 3, 4, 5, 6, 7};
    lane_mask bad = {0}, tail = lane < r - (r8 - LANES); /* the last chunk's ranks */
    for (int i = 0; i < x->batch; i++) {
        Py_ssize_t s = (Py_ssize_t)m * x->batch + i;
        bag_grads(bag_grad, grad_m + i * stride_b, bt, r, r8, x->dim, g->scale, nv, tail, &bad);
        for (Py_ssize_t v = x->offsets[s]; v < bag_end(x, s); v++) {
            int64_t u = x->index[v];
            if (x->hit[u])
                axpy(row_grad + (size_t)(u - g->key0) * r, 1.0f, bag_grad, r);
        }
    }
    for (int j = 0; j < LANES; j++)
        finite &= bad[j] == 0;
    return finite;
}

#define B_GRAD_RANKS(nv) ((nv) == 1 ? 8 : (nv) == 2 ? 4 : 2)

/* b_grad_t[k0 : k0 + kb, j0 : j0 + nv * LANES] += (sum[k] * scale) * the bag's gradient over the
   bags whose sum[k] != 0, in bag order, as one axpy per bag and rank added them; kb <= ranks,
   both and nv constants where inlined: the sums stay in registers. */
INLINE void b_grad_chunk(float *restrict b_grad_t, const float *grad_m, Py_ssize_t stride_b,
                         const float *sums_t, int batch, int r, int d, int k0, int kb, int j0,
                         float scale, int ranks, int nv) {
    lanes acc[8][CHUNK];
    for (int kk = 0; kk < ranks; kk++)
        for (int q = 0; q < nv; q++)
            acc[kk][q] = kk < kb ? *(lanes *)(b_grad_t + (size_t)(k0 + kk) * d + j0 + q * LANES)
                                 : (lanes){0};
    for (int i = 0; i < batch; i++) {
        const float *og = grad_m + i * stride_b + j0, *sum = sums_t + (size_t)i * r + k0;
        lanes v[CHUNK];
        for (int q = 0; q < nv; q++)
            v[q] = *(const lanes *)(og + q * LANES);
        for (int kk = 0; kk < ranks; kk++)
            if (kk < kb && sum[kk] != 0.0f) {
                float c = scale * sum[kk];
                for (int q = 0; q < nv; q++)
                    acc[kk][q] += c * v[q];
            }
    }
    for (int kk = 0; kk < kb; kk++)
        for (int q = 0; q < nv; q++)
            *(lanes *)(b_grad_t + (size_t)(k0 + kk) * d + j0 + q * LANES) = acc[kk][q];
}

INLINE void b_grad_ranks(float *restrict b_grad_t, const float *grad_m, Py_ssize_t stride_b,
                         const float *sums_t, int batch, int r, int d, int j0, float scale,
                         int nv) {
    int ranks = B_GRAD_RANKS(nv);
    for (int k0 = 0; k0 < r; k0 += ranks)
        b_grad_chunk(b_grad_t, grad_m, stride_b, sums_t, batch, r, d, k0,
                     r - k0 < ranks ? r - k0 : ranks, j0, scale, ranks, nv);
}

/* b_grad_t (r, d) += scale * sums_tᵀ G over one member's bags (see b_grad_chunk) */
INLINE void b_grads(float *restrict b_grad_t, const float *grad_m, Py_ssize_t stride_b,
                    const float *sums_t, int batch, int r, int d, float scale) {
    int j0 = 0;
    for (; j0 + CHUNK * LANES <= d; j0 += CHUNK * LANES)
        b_grad_ranks(b_grad_t, grad_m, stride_b, sums_t, batch, r, d, j0, scale, CHUNK);
    switch ((d - j0) / LANES) {
    case 3: b_grad_ranks(b_grad_t, grad_m, stride_b, sums_t, batch, r, d, j0, scale, 3); break;
    case 2: b_grad_ranks(b_grad_t, grad_m, stride_b, sums_t, batch, r, d, j0, scale, 2); break;
    case 1: b_grad_ranks(b_grad_t, grad_m, stride_b, sums_t, batch, r, d, j0, scale, 1); break;
    default: break;
    }
    for (int j = d / LANES * LANES; j < d; j++)
        for (int i = 0; i < batch; i++)
            for (int k = 0; k < r; k++) {
                float sum = sums_t[(size_t)i * r + k];
                if (sum != 0.0f)
                    b_grad_t[(size_t)k * d + j] += scale * sum * grad_m[i * stride_b + j];
            }
}

/* From the pooled embeddings' gradient (batch, n_features, dim): the group's A gradient per key
   (key1 - key0, rank), B's (tables, rank, dim) and each member's Gram matrix added into grams
   (the members' (members, dim, dim), zeroed before); bt: room for B_tᵀ (dim, rank rounded up to
   LANES). Returns 1 if A's per-bag gradients and B's are finite. */
CLONED
static int backward(const Batch *x, const Group *g, const float *restrict grad,
                    const float *restrict sums, float *restrict row_grad, float *restrict b_grad,
                    float *restrict grams, float *restrict bt) {
    int r = g->rank, r8 = (r + LANES - 1) / LANES * LANES, d = x->dim, finite = 1;
    int tables = g->member1 - g->member0;
    Py_ssize_t stride_b = (Py_ssize_t)x->n_features * d;
    memset(row_grad, 0, sizeof(float) * (size_t)(g->key1 - g->key0) * r);
    memset(b_grad, 0, sizeof(float) * (size_t)tables * r * d);
    for (int m = g->member0; m < g->member1; m++) {
        int t = m - g->member0;
        const float *grad_m = grad + x->features[m] * d, *sums_t = sums + (size_t)t * x->batch * r;
        transpose_b(bt, g->b + (size_t)t * r * d, r, r8, d);
        int nv = d / LANES;
        switch (nv) { /* constants for the models' widths, 8 to 32 */
        case 1: finite &= member_bags(x, g, m, grad_m, stride_b, bt, row_grad, grams, 1); break;
        case 2: finite &= member_bags(x, g, m, grad_m, stride_b, bt, row_grad, grams, 2); break;
        case 3: finite &= member_bags(x, g, m, grad_m, stride_b, bt, row_grad, grams, 3); break;
        case 4: finite &= member_bags(x, g, m, grad_m, stride_b, bt, row_grad, grams, 4); break;
        default: finite &= member_bags(x, g, m, grad_m, stride_b, bt, row_grad, grams, nv); break;
        }
        b_grads(b_grad + (size_t)t * r * d, grad_m, stride_b, sums_t, x->batch, r, d, g->scale);
    }
    return finite && all_finite(b_grad, (size_t)tables * r * d);
}

/* Row-wise Adagrad: accum[row] += mean(grad²); row -= lr * grad / (sqrt(accum[row]) + eps);
   accum is indexed by the buffers' rows (pos), A by the group's (pos - row0). */
static void rowwise_adagrad(const Batch *x, const Group *g, float *restrict accum,
                            const float *restrict row_grad, float lr, float eps) {
    int r = g->rank;
    for (Py_ssize_t u = g->key0; u < g->key1; u++) {
        Py_ssize_t ahead = u + PREFETCH;
        if (ahead < g->key1 && x->hit[ahead]) {
            __builtin_prefetch(g->a + (size_t)(x->pos[ahead] - g->row0) * r, 1);
            __builtin_prefetch(accum + x->pos[ahead], 1);
        }
        if (!x->hit[u])
            continue;
        const float *grad = row_grad + (size_t)(u - g->key0) * r;
        float *row = g->a + (size_t)(x->pos[u] - g->row0) * r;
        float acc = accum[x->pos[u]] + dot(grad, grad, r) / (float)r;
        accum[x->pos[u]] = acc;
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

static int parse_batch(PyObject *spec, Batch *x) {
    /* (pos, hit, index, offsets, features, nnz, keys, members, batch, dim, n_features) */
    PyObject *pos, *hit, *index, *offsets, *features;
    if (!PyArg_ParseTuple(spec, "OOOOOnniiii", &pos, &hit, &index, &offsets, &features, &x->nnz,
                          &x->keys, &x->members, &x->batch, &x->dim, &x->n_features))
        return -1;
    x->pos = PyLong_AsVoidPtr(pos);
    x->hit = PyLong_AsVoidPtr(hit);
    x->index = PyLong_AsVoidPtr(index);
    x->offsets = PyLong_AsVoidPtr(offsets);
    x->features = PyLong_AsVoidPtr(features);
    if (PyErr_Occurred())
        return -1;
    if (x->dim < 1 || x->dim > MAX_DIM || x->members < 0 || x->batch < 0 || x->nnz < 0 ||
        x->keys < 0 || x->n_features < 0) {
        PyErr_Format(PyExc_ValueError, "batch: dim must be in [1, %d], counts >= 0", MAX_DIM);
        return -1;
    }
    return 0;
}

/* The groups, each (key0, key1, member0, member1, row0, rows, rank, scale, a, b, b_m, b_v);
   NULL with an exception set when one is malformed. Free with free(). */
static Group *parse_groups(PyObject *specs, const Batch *x, Py_ssize_t *count) {
    *count = PyTuple_GET_SIZE(specs);
    Group *groups = malloc(sizeof(*groups) * (size_t)(*count ? *count : 1));
    if (!groups)
        return (Group *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < *count; i++) {
        Group *g = &groups[i];
        PyObject *a, *b, *b_m, *b_v;
        long long row0, rows;
        double scale;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs, i), "nniiLLidOOOO", &g->key0, &g->key1,
                              &g->member0, &g->member1, &row0, &rows, &g->rank, &scale, &a, &b,
                              &b_m, &b_v))
            break;
        g->row0 = row0, g->rows = rows, g->scale = (float)scale;
        g->a = PyLong_AsVoidPtr(a), g->b = PyLong_AsVoidPtr(b);
        g->b_m = PyLong_AsVoidPtr(b_m), g->b_v = PyLong_AsVoidPtr(b_v);
        if (PyErr_Occurred())
            break;
        if (g->rank < 1 || g->rank > MAX_RANK || g->key0 < 0 || g->key0 > g->key1 ||
            g->key1 > x->keys || g->member0 < 0 || g->member0 > g->member1 ||
            g->member1 > x->members || g->row0 < 0 || g->rows < 0) {
            PyErr_Format(PyExc_ValueError,
                         "groups: rank must be in [1, %d], key, member and row ranges in bounds",
                         MAX_RANK);
            break;
        }
    }
    if (PyErr_Occurred()) {
        free(groups);
        return NULL;
    }
    return groups;
}

/* 0 when everything indexes within its arrays: the bags start in order within the values (the
   first at 0), values name keys < keys, every member's column < n_features, and each group's
   values name its own keys, whose active ones name its own rows. */
static int bags_in_range(const Batch *x, const Group *groups, Py_ssize_t count) {
    Py_ssize_t bags = (Py_ssize_t)x->members * x->batch, previous = 0;
    for (Py_ssize_t s = 0; s < bags; s++) {
        if (x->offsets[s] < previous || x->offsets[s] > x->nnz)
            return -1;
        previous = x->offsets[s];
    }
    if (bags && x->offsets[0] != 0)
        return -1;
    for (int m = 0; m < x->members; m++)
        if ((uint64_t)x->features[m] >= (uint64_t)x->n_features)
            return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Group *g = &groups[i];
        Py_ssize_t first = (Py_ssize_t)g->member0 * x->batch, last = (Py_ssize_t)g->member1 * x->batch;
        Py_ssize_t end = last < bags ? x->offsets[last] : x->nnz;
        for (Py_ssize_t v = first < bags ? x->offsets[first] : x->nnz; v < end; v++)
            if (x->index[v] < g->key0 || x->index[v] >= g->key1)
                return -1;
        for (Py_ssize_t u = g->key0; u < g->key1; u++)
            if (x->hit[u] && (x->pos[u] < g->row0 || x->pos[u] - g->row0 >= g->rows))
                return -1;
    }
    return 0;
}

/* Parses and checks a call's batch and groups; NULL with an exception set if they are bad. */
static Group *parse_call(PyObject *batch_spec, PyObject *group_specs, Batch *x, Py_ssize_t *count) {
    if (parse_batch(batch_spec, x) < 0)
        return NULL;
    Group *groups = parse_groups(group_specs, x, count);
    if (groups && bags_in_range(x, groups, *count) < 0) {
        free(groups);
        PyErr_SetString(PyExc_IndexError, "bags: an offset, key, column or row is out of range");
        return NULL;
    }
    return groups;
}

/* The floats of each group's part of a scratch buffer: sums (tables * batch * rank), row_grad
   ((key1 - key0) * rank) or b_grad (tables * rank * dim). */
enum Part { SUMS, ROW_GRAD, B_GRAD };

static size_t part_size(const Batch *x, const Group *g, enum Part part) {
    size_t tables = (size_t)(g->member1 - g->member0), r = (size_t)g->rank;
    if (part == SUMS)
        return tables * (size_t)x->batch * r;
    if (part == ROW_GRAD)
        return (size_t)(g->key1 - g->key0) * r;
    return tables * r * (size_t)x->dim;
}

/* 0 when each buffer of `sizes` (floats) holds the groups' parts of it, else -1 (ValueError). */
static int check_sizes(const Batch *x, const Group *groups, Py_ssize_t count,
                       const Py_ssize_t *sizes, const enum Part *parts, int n) {
    for (int p = 0; p < n; p++) {
        size_t need = 0;
        for (Py_ssize_t i = 0; i < count; i++)
            need += part_size(x, &groups[i], parts[p]);
        if (sizes[p] < 0 || (size_t)sizes[p] != need) {
            PyErr_Format(PyExc_ValueError, "scratch buffer %d holds %zd floats, needs %zu", p,
                         sizes[p], need);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(lora_forward_doc,
             "lora_forward(batch, groups, out_ptr, sums_ptr, sums_size)\n\n"
             "batch: (pos_ptr, hit_ptr, index_ptr, offsets_ptr, features_ptr, nnz, keys, members,\n"
             "batch, dim, n_features): key u (of `keys`) at row pos[u] (int64) of the buffers when\n"
             "hit[u] (bool), value v of key index[v] (int64), bag s = m * batch + i of member m\n"
             "starting at offsets[s] (int64, members * batch), member m's column features[m]\n"
             "(int64). groups: for each rank group, (key0, key1, member0, member1, row0, rows,\n"
             "rank, scale, a_ptr, b_ptr, b_m_ptr, b_v_ptr): its keys, members, the rows its A\n"
             "(rows, rank) holds from row0, its B (members, rank, dim); float32, contiguous.\n"
             "Adds each bag's scale * (sum of its active A rows) @ B_t into out (batch,\n"
             "n_features, dim) float32 at the member's column; with sums_ptr != 0 writes the sums\n"
             "(group after group, (members * batch, rank) each: sums_size floats) there too.");

static PyObject *lora_forward(PyObject *self, PyObject *args) {
    PyObject *batch_spec, *group_specs, *out_obj, *sums_obj;
    Py_ssize_t sums_size, count;
    Batch x;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!OOn", &PyTuple_Type, &batch_spec, &PyTuple_Type,
                          &group_specs, &out_obj, &sums_obj, &sums_size))
        return NULL;
    Group *groups = parse_call(batch_spec, group_specs, &x, &count);
    if (!groups)
        return NULL;
    float *out = PyLong_AsVoidPtr(out_obj), *sums = PyLong_AsVoidPtr(sums_obj);
    enum Part parts[] = {SUMS};
    if (PyErr_Occurred() || (sums && check_sizes(&x, groups, count, &sums_size, parts, 1) < 0)) {
        free(groups);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < count; i++) {
        forward(&x, &groups[i], out, sums);
        if (sums)
            sums += part_size(&x, &groups[i], SUMS);
    }
    Py_END_ALLOW_THREADS;
    free(groups);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(lora_backward_doc,
             "lora_backward(batch, groups, grad_ptr, sums_ptr, row_grad_ptr, b_grad_ptr,\n"
             "              grams_ptr, sizes) -> bool\n\n"
             "batch and groups as lora_forward's. From grad (batch, n_features, dim) float32,\n"
             "contiguous, the gradient of lora_forward's out, and its sums: for each group (one\n"
             "after another in each buffer) row_grad (key1 - key0, rank) = each active key's sum\n"
             "over its values of scale * grad[bag] @ B_tᵀ, b_grad (members, rank, dim) = scale *\n"
             "sumsᵀ grad; grams (members, dim, dim) = each member's gradᵀ grad; all written, not\n"
             "added. sizes: (sums, row_grad, b_grad) floats. False when a bag's\n"
             "scale * grad @ B_tᵀ or a B's gradient is not finite.");

static PyObject *lora_backward(PyObject *self, PyObject *args) {
    PyObject *batch_spec, *group_specs, *grad_obj, *sums_obj, *row_grad_obj, *b_grad_obj;
    PyObject *grams_obj;
    Py_ssize_t sizes[3], count;
    Batch x;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO(nnn)", &PyTuple_Type, &batch_spec, &PyTuple_Type,
                          &group_specs, &grad_obj, &sums_obj, &row_grad_obj, &b_grad_obj,
                          &grams_obj, &sizes[0], &sizes[1], &sizes[2]))
        return NULL;
    Group *groups = parse_call(batch_spec, group_specs, &x, &count);
    if (!groups)
        return NULL;
    const float *grad = PyLong_AsVoidPtr(grad_obj), *sums = PyLong_AsVoidPtr(sums_obj);
    float *row_grad = PyLong_AsVoidPtr(row_grad_obj), *b_grad = PyLong_AsVoidPtr(b_grad_obj);
    float *grams = PyLong_AsVoidPtr(grams_obj);
    enum Part parts[] = {SUMS, ROW_GRAD, B_GRAD};
    if (PyErr_Occurred() || check_sizes(&x, groups, count, sizes, parts, 3) < 0) {
        free(groups);
        return NULL;
    }
    int widest = 1; /* the groups' ranks rounded up to LANES: room for any B_tᵀ */
    for (Py_ssize_t i = 0; i < count; i++)
        if (groups[i].rank > widest)
            widest = groups[i].rank;
    float *bt = malloc(sizeof(float) * (size_t)x.dim * ((widest + LANES - 1) / LANES * LANES));
    if (!bt) {
        free(groups);
        return PyErr_NoMemory();
    }
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS;
    /* every member's: one in no group gets zeros, never what the buffer held */
    memset(grams, 0, sizeof(float) * (size_t)x.members * x.dim * x.dim);
    for (Py_ssize_t i = 0; i < count; i++) {
        const Group *g = &groups[i];
        finite &= backward(&x, g, grad, sums, row_grad, b_grad, grams, bt);
        sums += part_size(&x, g, SUMS);
        row_grad += part_size(&x, g, ROW_GRAD);
        b_grad += part_size(&x, g, B_GRAD);
    }
    Py_END_ALLOW_THREADS;
    free(bt);
    free(groups);
    return PyBool_FromLong(finite);
}

PyDoc_STRVAR(lora_step_doc,
             "lora_step(batch, groups, accum_ptr, accum_size, row_grad_ptr, b_grad_ptr, sizes,\n"
             "          grams_ptr, steps, observers, lr_a, eps_a, lr_b, beta1, beta2, eps_b)\n\n"
             "batch and groups as lora_forward's, row_grad, b_grad and grams as lora_backward\n"
             "wrote them (sizes: row_grad's and b_grad's floats). Row-wise Adagrad on each group's\n"
             "active keys' rows of A (accum (accum_size,) float32, indexed by the buffers' rows\n"
             "pos[u]), then Adam on B_t and its moments for each member m whose steps[m] (a tuple,\n"
             "one int per member) is >= 1 (its Adam step count), and its Gram matrix's upper\n"
             "triangle (row-major, dim (dim + 1) / 2 floats: the Gram is symmetric) added into the\n"
             "float32 at observers[m] (a tuple of pointers, 0: none).");

static PyObject *lora_step(PyObject *self, PyObject *args) {
    PyObject *batch_spec, *group_specs, *accum_obj, *row_grad_obj, *b_grad_obj, *steps_obj;
    PyObject *grams_obj, *observers_obj;
    Py_ssize_t sizes[2], count, accum_size;
    float lr_a, eps_a;
    Adam o;
    Batch x;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!OnOO(nn)OO!O!ffffff", &PyTuple_Type, &batch_spec,
                          &PyTuple_Type, &group_specs, &accum_obj, &accum_size, &row_grad_obj,
                          &b_grad_obj, &sizes[0], &sizes[1], &grams_obj, &PyTuple_Type, &steps_obj,
                          &PyTuple_Type, &observers_obj, &lr_a, &eps_a, &o.lr, &o.beta1, &o.beta2,
                          &o.eps))
        return NULL;
    Group *groups = parse_call(batch_spec, group_specs, &x, &count);
    if (!groups)
        return NULL;
    enum Part parts[] = {ROW_GRAD, B_GRAD};
    if (PyTuple_GET_SIZE(steps_obj) != x.members || PyTuple_GET_SIZE(observers_obj) != x.members)
        PyErr_SetString(PyExc_ValueError, "steps, observers: one per member");
    else if (check_sizes(&x, groups, count, sizes, parts, 2) == 0)
        for (Py_ssize_t i = 0; i < count; i++)
            if (groups[i].row0 + groups[i].rows > accum_size) {
                PyErr_SetString(PyExc_ValueError, "accum: fewer rows than the groups hold");
                break;
            }
    int64_t *steps = malloc(sizeof(*steps) * (size_t)(x.members ? x.members : 1));
    float **observers = malloc(sizeof(*observers) * (size_t)(x.members ? x.members : 1));
    if ((!steps || !observers) && !PyErr_Occurred())
        PyErr_NoMemory();
    for (int m = 0; steps && observers && !PyErr_Occurred() && m < x.members; m++) {
        steps[m] = PyLong_AsLongLong(PyTuple_GET_ITEM(steps_obj, m));
        observers[m] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(observers_obj, m));
    }
    float *accum = PyLong_AsVoidPtr(accum_obj);
    const float *row_grad = PyLong_AsVoidPtr(row_grad_obj);
    const float *b_grad = PyLong_AsVoidPtr(b_grad_obj), *grams = PyLong_AsVoidPtr(grams_obj);
    if (PyErr_Occurred()) {
        free(steps);
        free(observers);
        free(groups);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Group *g = &groups[i];
        size_t size = (size_t)g->rank * x.dim;
        rowwise_adagrad(&x, g, accum, row_grad, lr_a, eps_a);
        for (int m = g->member0; m < g->member1; m++) {
            size_t at = (size_t)(m - g->member0) * size;
            if (steps[m] >= 1)
                adam(&o, g->b + at, b_grad + at, g->b_m + at, g->b_v + at, size, steps[m]);
        }
        row_grad += part_size(&x, g, ROW_GRAD);
        b_grad += part_size(&x, g, B_GRAD);
    }
    size_t square = (size_t)x.dim * x.dim;
    for (int m = 0; m < x.members; m++)
        if (observers[m]) {  /* packed: the upper triangle, row-major */
            float *out = observers[m];
            const float *gram = grams + (size_t)m * square;
            for (int j = 0; j < x.dim; j++)
                for (int k = j; k < x.dim; k++)
                    *out++ += gram[(size_t)j * x.dim + k];
        }
    Py_END_ALLOW_THREADS;
    free(steps);
    free(observers);
    free(groups);
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

PyDoc_STRVAR(all_finite_doc,
             "all_finite(x_ptr, n) -> bool\n\n"
             "Whether the n contiguous float32 at x_ptr are all finite: the trainer's check of a\n"
             "batch's dense features and labels (torch's isfinite, all and bool: ~25 us a tensor).");

static PyObject *all_finite_py(PyObject *self, PyObject *args) {
    PyObject *x_obj;
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &x_obj, &n))
        return NULL;
    const float *x = PyLong_AsVoidPtr(x_obj);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0 || (n > 0 && !x)) {
        PyErr_SetString(PyExc_ValueError, "all_finite: n must be >= 0 and x non-null");
        return NULL;
    }
    return PyBool_FromLong(all_finite(x, (size_t)n));
}

static PyMethodDef methods[] = {
    {"all_finite", all_finite_py, METH_VARARGS, all_finite_doc},
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
