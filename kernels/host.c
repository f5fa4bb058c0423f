/* _gpugrad_host: the numpy backend's fused functions as compiled loops, for the CPU.
 *
 * A training step of a small model spends more time in numpy's per-call overhead than in the
 * arithmetic of its elementwise chains: NumpyBackend.layer_forward is ~20 numpy calls on a
 * (100, 50) array, each a few microseconds. Here each of those functions is one pass (or a few)
 * over its arrays in one call, the way kernels/mlp.cuh runs them as one kernel each on a card;
 * and a sparse mini-batch step with lazy momentum (gpugrad/training/sparse_sgd.py) is one call
 * in place of ~25 numpy passes over the batch's columns.
 *
 * The layer functions and the optimiser's update do numpy's arithmetic in numpy's order, so they
 * give the numpy code's results bit for bit (tests/test_host.py compares them):
 * - each elementwise operation is rounded to the array's type (T, float or double) on its own:
 *   built with -ffp-contract=off (no fused multiply-add) and without -ffast-math;
 * - a Python float operand (eps, momentum, the optimiser's hyperparameters) is rounded to T
 *   first, as numpy 2 does with a Python scalar (NEP 50);
 * - a column sum of a C-contiguous (n, m) array, m >= 2, adds the rows one after the other,
 *   starting from row 0, as numpy's add.reduce(axis=0) does (for m = 1 numpy sums pairwise; the
 *   Python side keeps such shapes on numpy).
 * Not bit for bit, within rounding: the softmax's exp and log (the C library's, within an ulp of
 * numpy's), the loss (summed in double), and the sparse step (its own order).
 *
 * Array arguments are objects with the buffer protocol (numpy arrays) or None where optional;
 * every one is checked (type, size, contiguity, indices in range) before any is written, and a
 * ValueError, TypeError or BufferError says which. gpugrad/backends/host.py calls them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif
#define UPDATE_BLOCK 1024 /* values of each array the update takes at a time */
#define AHEAD 8 /* records asked for this many columns before the sparse step reads them */

/* ---- arguments ------------------------------------------------------------------------------ */

typedef struct {
    Py_buffer views[24];
    int count;
} Held;

static void release(Held *held) {
    for (int i = 0; i < held->count; i++) PyBuffer_Release(&held->views[i]);
    held->count = 0;
}

/* The data of a C-contiguous array of items of `itemsize` bytes in one of the formats `kinds`
 * ("f", "d", "i" for int32, "ql" for int64), and in *count (when given) how many it holds; NULL
 * with an exception set when it is not one. */
static void *view_of(Held *held, PyObject *obj, Py_ssize_t itemsize, const char *kinds, int writable,
                     const char *name, Py_ssize_t *count) {
    Py_buffer *view = &held->views[held->count];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    held->count++;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (view->itemsize != itemsize || f[0] == '\0' || f[1] != '\0' || strchr(kinds, f[0]) == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: expected values of format %s, %zd bytes each, got format %s", name,
                     kinds, itemsize, view->format ? view->format : "B");
        return NULL;
    }
    if (count) *count = view->len / itemsize;
    return view->buf;
}

/* The data of a float array (float32 when itemsize is 4, float64 when 8) of exactly `size` values
 * (any number when size < 0, then in *count when given); NULL without an exception for None when
 * `optional`, NULL with an exception set when it is not such an array. */
static void *data_of(Held *held, PyObject *obj, Py_ssize_t size, Py_ssize_t itemsize, int writable,
                     int optional, const char *name, Py_ssize_t *count) {
    if (obj == Py_None) {
        if (optional) return NULL;
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    Py_ssize_t have;
    void *buf = view_of(held, obj, itemsize, itemsize == 4 ? "f" : "d", writable, name, &have);
    if (buf != NULL && size >= 0 && have != size) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd values, got %zd", name, size, have);
        return NULL;
    }
    if (buf != NULL && count) *count = have;
    return buf;
}

/* The data of an integer array (`kinds` as for view_of) of at least `size` values, and in *count
 * (when given) how many it holds; NULL with an exception set otherwise. */
static void *ints_of(Held *held, PyObject *obj, Py_ssize_t size, Py_ssize_t itemsize, const char *kinds,
                     int writable, const char *name, Py_ssize_t *count) {
    Py_ssize_t have;
    void *buf = view_of(held, obj, itemsize, kinds, writable, name, &have);
    if (buf != NULL && have < size) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd values, got %zd", name, size, have);
        return NULL;
    }
    if (buf != NULL && count) *count = have;
    return buf;
}

/* ---- the loops, once for each type ------------------------------------------------------------ */

#define DEFINE_LOOPS(T, SUF)                                                                            \
/* out[j] = sum_i a[i, j] (rows in order, from row 0), a (n, m) */                                      \
static void colsum_##SUF(Py_ssize_t n, Py_ssize_t m, const T *restrict a, T *restrict out) {            \
    memcpy(out, a, (size_t)m * sizeof(T));                                                              \
    for (Py_ssize_t i = 1; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) out[j] = out[j] + a[i * m + j];                              \
}                                                                                                       \
/* out[j] = sum_i a[i, j] * b[i, j], each product rounded before it is added */                         \
static void colsum_prod_##SUF(Py_ssize_t n, Py_ssize_t m, const T *restrict a, const T *restrict b,     \
                               T *restrict out) {                                                       \
    for (Py_ssize_t j = 0; j < m; j++) out[j] = a[j] * b[j];                                            \
    for (Py_ssize_t i = 1; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) out[j] = out[j] + a[i * m + j] * b[i * m + j];               \
}                                                                                                       \
/* np.maximum(x, 0): NaN stays NaN */                                                                   \
static inline T relu_##SUF(T x) { return (x > 0 || x != x) ? x : (T)0; }                                \
                                                                                                        \
/* NumpyBackend.layer_forward: s += b; then h = relu(s), or batch norm and relu (see there). */         \
static void layer_forward_##SUF(Py_ssize_t n, Py_ssize_t m, T *restrict s, const T *restrict b,         \
                                const T *restrict gamma, const T *restrict beta, T *restrict rm,        \
                                T *restrict rv, double momentum, double eps, T *restrict h,             \
                                T *restrict xhat, T *restrict inv, T *restrict mu, T *restrict var) {   \
    for (Py_ssize_t i = 0; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) s[i * m + j] = s[i * m + j] + b[j];                          \
    if (gamma == NULL) {                                                                                \
        for (Py_ssize_t k = 0; k < n * m; k++) h[k] = relu_##SUF(s[k]);                                 \
        return;                                                                                         \
    }                                                                                                   \
    colsum_##SUF(n, m, s, mu);                                                                          \
    for (Py_ssize_t j = 0; j < m; j++) mu[j] = mu[j] / (T)n;                                            \
    for (Py_ssize_t i = 0; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) {                                                            \
            T c = s[i * m + j] - mu[j];                                                                 \
            xhat[i * m + j] = c;                                                                        \
            h[i * m + j] = c * c;                                                                       \
        }                                                                                               \
    colsum_##SUF(n, m, h, var);                                                                         \
    for (Py_ssize_t j = 0; j < m; j++) {                                                                \
        var[j] = var[j] / (T)n;                                                                         \
        T v = var[j] + (T)eps;                                                                          \
        v = (T)sqrt((double)v); /* the square root of a float, rounded once: sqrtf's value */           \
        inv[j] = (T)1 / v;                                                                              \
    }                                                                                                   \
    for (Py_ssize_t i = 0; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) xhat[i * m + j] = xhat[i * m + j] * inv[j];                  \
    if (rm != NULL) {                                                                                   \
        T keep = (T)(1 - momentum), take = (T)momentum, unbias = (T)((double)n / (double)(n - 1));      \
        for (Py_ssize_t j = 0; j < m; j++) {                                                            \
            rm[j] = keep * rm[j] + take * mu[j];                                                        \
            rv[j] = keep * rv[j] + take * (var[j] * unbias);                                            \
        }                                                                                               \
    }                                                                                                   \
    for (Py_ssize_t i = 0; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) {                                                            \
            T z = gamma[j] * xhat[i * m + j];                                                           \
            z = z + beta[j];                                                                            \
            h[i * m + j] = relu_##SUF(z);                                                               \
        }                                                                                               \
}                                                                                                       \
                                                                                                        \
/* NumpyBackend.layer_backward: g = dh [h > 0] in place, then the batch-norm VJP (see there). */        \
static void layer_backward_##SUF(Py_ssize_t n, Py_ssize_t m, T *restrict g, const T *restrict h,        \
                                 const T *restrict xhat, const T *restrict gamma,                       \
                                 const T *restrict inv, T *restrict dgamma, T *restrict dbeta,          \
                                 T *restrict db, T *restrict sg, T *restrict sgx) {                     \
    if (h != NULL)                                                                                      \
        for (Py_ssize_t k = 0; k < n * m; k++) g[k] = g[k] * (h[k] > 0 ? (T)1 : (T)0);                  \
    if (gamma != NULL) {                                                                                \
        colsum_prod_##SUF(n, m, g, xhat, dgamma);                                                       \
        colsum_##SUF(n, m, g, dbeta);                                                                   \
        for (Py_ssize_t i = 0; i < n; i++)                                                              \
            for (Py_ssize_t j = 0; j < m; j++) g[i * m + j] = g[i * m + j] * gamma[j];                  \
        colsum_##SUF(n, m, g, sg);                                                                      \
        colsum_prod_##SUF(n, m, g, xhat, sgx);                                                          \
        T tn = (T)n;                                                                                    \
        for (Py_ssize_t j = 0; j < m; j++) sgx[m + j] = inv[j] / tn; /* inv_std / n */                  \
        for (Py_ssize_t i = 0; i < n; i++)                                                              \
            for (Py_ssize_t j = 0; j < m; j++) {                                                        \
                T v = g[i * m + j] * tn;                                                                \
                v = v - sg[j];                                                                          \
                v = v - xhat[i * m + j] * sgx[j];                                                       \
                g[i * m + j] = v * sgx[m + j];                                                          \
            }                                                                                           \
    }                                                                                                   \
    colsum_##SUF(n, m, g, db);                                                                          \
}                                                                                                       \
                                                                                                        \
/* NumpyBackend.softmax_cross_entropy_grad: dS = (P - Y) / n from the scores S (n, C) and labels        \
 * y (checked by the caller: 0 <= y_i < C); returns the mean loss, summed in double. Per row, as        \
 * the numpy code: the max m taken out; the sum over the other classes kept apart from e_y (so          \
 * that p_y - 1 = -others / total is exact when p_y rounds to 1); log1p(others / e_y) where y is        \
 * (near) the max. exp and log are the C library's: within an ulp of numpy's, not bit for bit. */       \
static double softmax_ce_##SUF(Py_ssize_t n, Py_ssize_t C, const T *restrict S,                         \
                               const int64_t *restrict y, T *restrict dS, T (*ex)(T), T (*lg)(T),       \
                               T (*lg1p)(T)) {                                                          \
    double loss = 0;                                                                                    \
    T tn = (T)n;                                                                                        \
    for (Py_ssize_t i = 0; i < n; i++) {                                                                \
        const T *s = S + i * C;                                                                         \
        T *e = dS + i * C;                                                                              \
        Py_ssize_t yi = (Py_ssize_t)y[i];                                                               \
        T m = s[0];                                                                                     \
        for (Py_ssize_t j = 1; j < C; j++) m = s[j] > m ? s[j] : m;                                     \
        T others = 0;                                                                                   \
        for (Py_ssize_t j = 0; j < C; j++) {                                                            \
            e[j] = ex(s[j] - m);                                                                        \
            if (j != yi) others = others + e[j];                                                        \
        }                                                                                               \
        T e_y = e[yi], total = others + e_y, shift = s[yi] - m;                                         \
        T scale = (T)1 / (tn * total);                                                                  \
        for (Py_ssize_t j = 0; j < C; j++) e[j] = e[j] * scale;                                         \
        e[yi] = -others * scale;                                                                        \
        loss += (double)(shift > -1 ? lg1p(others / e_y) : lg(total) - shift);                          \
    }                                                                                                   \
    return loss / (double)n;                                                                            \
}                                                                                                       \
                                                                                                        \
                                                                                                        \
/* the optimiser's rule on p[lo:hi] (the penalty already in g): sgd p -= lr g; momentum                 \
 * v = mu v - lr g, p += v (Nesterov: p += mu v - lr g); adam m = b1 m + (1 - b1) g,                    \
 * v = b2 v + (1 - b2) g^2, p -= a m / (sqrt(v) + e) */                                                 \
static void rule_##SUF(int rule, Py_ssize_t lo, Py_ssize_t hi, T *restrict p, const T *restrict g,      \
                       T *restrict s1, T *restrict s2, const double *restrict hp) {                     \
    if (rule == 0) {                                                                                    \
        T lr = (T)hp[0];                                                                                \
        for (Py_ssize_t k = lo; k < hi; k++) p[k] = p[k] - g[k] * lr;                                   \
    } else if (rule == 1 || rule == 2) {                                                                \
        T lr = (T)hp[0], mu = (T)hp[1];                                                                 \
        for (Py_ssize_t k = lo; k < hi; k++) {                                                          \
            T step = g[k] * lr;                                                                         \
            T v = s1[k] * mu - step;                                                                    \
            s1[k] = v;                                                                                  \
            p[k] = p[k] + (rule == 2 ? v * mu - step : v);                                              \
        }                                                                                               \
    } else {                                                                                            \
        T b1 = (T)hp[0], c1 = (T)hp[1], b2 = (T)hp[2], cb2 = (T)hp[3], a = (T)hp[4], e = (T)hp[5];      \
        for (Py_ssize_t k = lo; k < hi; k++) {                                                          \
            T mk = s1[k] * b1 + g[k] * c1;                                                              \
            T gg = g[k] * g[k];                                                                         \
            T vk = s2[k] * b2 + gg * cb2;                                                               \
            s1[k] = mk;                                                                                 \
            s2[k] = vk;                                                                                 \
            T den = (T)sqrt((double)vk) + e;                                                            \
            p[k] = p[k] - (mk * a) / den;                                                               \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* NumpyBackend.optimizer_update (after its record): g[:nd] += p[:nd] (2 lam), then the rule; a         \
 * block at a time, so that the rule finds the block's p and g still in cache. */                       \
static void update_##SUF(int rule, Py_ssize_t size, Py_ssize_t nd, double c2, T *restrict p,            \
                         T *restrict g, T *restrict s1, T *restrict s2, const double *restrict hp) {    \
    T c = (T)c2;                                                                                        \
    for (Py_ssize_t lo = 0; lo < size; lo += UPDATE_BLOCK) {                                            \
        Py_ssize_t hi = lo + UPDATE_BLOCK < size ? lo + UPDATE_BLOCK : size, pe = hi < nd ? hi : nd;    \
        for (Py_ssize_t k = lo; k < pe; k++) g[k] = g[k] + p[k] * c;                                    \
        rule_##SUF(rule, lo, hi, p, g, s1, s2, hp);                                                     \
    }                                                                                                   \
}

DEFINE_LOOPS(float, f32)
DEFINE_LOOPS(double, f64)

static float ex_f32(float x) { return expf(x); }
static float lg_f32(float x) { return logf(x); }
static float lg1p_f32(float x) { return log1pf(x); }
static double ex_f64(double x) { return exp(x); }
static double lg_f64(double x) { return log(x); }
static double lg1p_f64(double x) { return log1p(x); }

/* ---- a sparse mini-batch step with lazy momentum (gpugrad/training/sparse_sgd.py) -------------------
 *
 * One step of heavy-ball (or Nesterov) momentum SGD on CSR X for the batch's rows, touching only
 * the columns the batch uses: sparse_sgd._Momentum's algorithm (see its module docstring), every
 * part of a step in one call. Z holds the columns' state as records (Layout): a column's row of W^T
 * and of V^T, each padded with zeros from C to P values so that every loop over the classes is whole
 * vectors, its gram (w.w, w.v, v.v at its last step) and its last step, all a step reads and writes
 * of a column in a few whole cache lines.
 *
 * The step goes over the batch column by column, the columns in increasing order (so that Z is read
 * in order, not at random), each with its entries (the batch's CSR rows turned into columns first):
 * the scores S = X W^T + b are a column's w, brought from its last step to this one through the
 * 2 x 2 map A[last], times its entries' values added into their rows' scores; then, row by row, the
 * loss and dL/dS; then, column by column again, dW's data term (the entries' values times their
 * rows' dL/dS) and the update of the columns that have one (a column only rows with a zero dL/dS
 * use keeps its record: the lazy catch-up is its update). What a step takes at random is then the
 * batch's n rows of scores (a few dozen kB), not the columns' weights: a row-by-row step gathers a
 * column's weights for each of its entries, from megabytes of them. groups[s], the sums of the gram
 * of the columns last at step s (which is what ||W||^2 for the step's cost needs), are kept up to
 * date. The loops over the classes are written with GNU C's vector extensions (gcc, clang).
 *
 * Each weight and velocity is computed with the numpy lazy step's operations in its order (a score
 * adds the row's entries in order of their columns, then b: the row's order where its indices are
 * sorted; dW's term adds the rows in order); the sums for ||W||^2 (each column's in T, the rest in
 * double) are this loop's own, within rounding of numpy's.
 */

#define VECTOR_BYTES 16 /* one SSE2 register */
#define VEC(p) (*(vec *)(p)) /* the vector at p (the function's `vec`, any alignment) */

/* A column's record in sparse_step's Z: its row of W^T and its row of V^T, P values each (zeros past
 * C), then `gram` (w.w, w.v, v.v at its last step, three doubles) and `last` (int64), the record
 * padded to whole cache lines: all a step reads and writes of a column, in one place. */
typedef struct {
    Py_ssize_t P, bytes, gram, last; /* values in a row; the record's bytes; the offsets of gram and last */
} Layout;

static Layout record_layout(Py_ssize_t C, Py_ssize_t itemsize) {
    Py_ssize_t lanes = VECTOR_BYTES / itemsize, P = (C + lanes - 1) / lanes * lanes, gram = 2 * P * itemsize;
    return (Layout){P, (gram + 32 + 63) / 64 * 64, gram, gram + 24};
}

/* the scratch sparse_step takes for a batch of n rows and e entries among d columns: work, values
 * of T (the rows' scores, b, the entries' values column by column), and iwork, int64 (the k =
 * min(e, d) columns, where each one's entries end; then, as int32, the entries' rows and each row's
 * liveness) */
static void scratch_sizes(Py_ssize_t C, Py_ssize_t itemsize, Py_ssize_t n, Py_ssize_t e, Py_ssize_t d,
                          Py_ssize_t *work, Py_ssize_t *iwork) {
    Py_ssize_t k = e < d ? e : d;
    *work = (n + 1) * record_layout(C, itemsize).P + e;
    *iwork = 2 * k + (e + n + 1) / 2;
}

typedef struct {
    Py_ssize_t C, n, d, kmax, entries;
    Layout rec;
    const int32_t *indices, *indptr;
    const int64_t *rows, *y;
    uint64_t *marks;
    int32_t *count;
    Py_ssize_t r;
    double *A; /* the window's maps, moved on by the step */
    double *groups;
    double lr, mu, c;
    int nesterov, svm;
} SparseArgs;

/* the window's maps moved on by the step's map M (what the update does to a column without a data
 * term: heavy ball [[1 - lr c, mu], [-lr c, mu]], Nesterov [[1 - lr c (1 + mu), mu^2], [-lr c, mu]]):
 * A[s] <- M A[s] for s <= r, and A[r + 1] = I for the columns the step updated. (Each map kept
 * itself: never Q_r Q_s^-1 through the inverse of the window's product, which grows as mu^-s.) */
static void advance_maps(const SparseArgs *a) {
    double decay = a->lr * a->c, mu = a->mu;
    double m00 = a->nesterov ? 1 - decay * (1 + mu) : 1 - decay, m01 = a->nesterov ? mu * mu : mu;
    double m10 = -decay, m11 = mu;
    for (Py_ssize_t s = 0; s <= a->r; s++) {
        double *m = a->A + 4 * s, a00 = m[0], a01 = m[1], a10 = m[2], a11 = m[3];
        m[0] = m00 * a00 + m01 * a10, m[1] = m00 * a01 + m01 * a11;
        m[2] = m10 * a00 + m11 * a10, m[3] = m10 * a01 + m11 * a11;
    }
    double *one = a->A + 4 * (a->r + 1);
    one[0] = 1, one[1] = 0, one[2] = 0, one[3] = 1;
}

#define EXP_f32 expf
#define LOG_f32 logf
#define LOG1P_f32 log1pf
#define EXP_f64 exp
#define LOG_f64 log
#define LOG1P_f64 log1p

/* nv's constant cases 1..8 of an always_inline pass over the batch's columns (its vector loops'
 * count known at compile time, the sums in registers), the general case past them */
#define BY_VECTORS(call, ...)                                                                           \
    switch (P / V) {                                                                                    \
    case 1: call(a, 1, __VA_ARGS__); break;                                                             \
    case 2: call(a, 2, __VA_ARGS__); break;                                                             \
    case 3: call(a, 3, __VA_ARGS__); break;                                                             \
    case 4: call(a, 4, __VA_ARGS__); break;                                                             \
    case 5: call(a, 5, __VA_ARGS__); break;                                                             \
    case 6: call(a, 6, __VA_ARGS__); break;                                                             \
    case 7: call(a, 7, __VA_ARGS__); break;                                                             \
    case 8: call(a, 8, __VA_ARGS__); break;                                                             \
    default: call(a, P / V, __VA_ARGS__);                                                               \
    }

#define DEFINE_SPARSE(T, SUF)                                                                           \
/* VECTOR_BYTES of T, loaded from and stored to any T (unaligned) */                                    \
typedef T vec_##SUF __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(T)), may_alias));          \
enum { LANES_##SUF = VECTOR_BYTES / sizeof(T) };                                                        \
                                                                                                        \
/* the row's loss added to *loss, and dL/dS of the row written over its scores s (n = tn rows);         \
 * returns 0 when every dS_j is zero (a hinge row with no margin violated), 1 otherwise */              \
static int sparse_row_loss_##SUF(int svm, Py_ssize_t C, T tn, T *s, Py_ssize_t yi, T w, double *loss) { \
    double l;                                                                                           \
    T *g = s, sy = s[yi];                                                                               \
    int any = 1;                                                                                        \
    if (svm) { /* hinge: sum_{j != y} max(0, s_j - s_y + 1); dS_j = [margin > 0] / n */                 \
        T count = 0;                                                                                    \
        l = 0;                                                                                          \
        for (Py_ssize_t j = 0; j < C; j++) {                                                            \
            T margin = s[j] - sy + (T)1;                                                                \
            int on = j != yi && margin > 0;                                                             \
            if (on) { l += (double)margin; count = count + (T)1; }                                      \
            g[j] = (on ? (T)1 : (T)0) / tn;                                                             \
        }                                                                                               \
        g[yi] = -count / tn;                                                                            \
        any = count > 0;                                                                                \
    } else { /* softmax cross-entropy, as softmax_ce */                                                 \
        T m = s[0];                                                                                     \
        for (Py_ssize_t j = 1; j < C; j++) m = s[j] > m ? s[j] : m;                                     \
        T others = 0, shift = sy - m;                                                                   \
        for (Py_ssize_t j = 0; j < C; j++) {                                                            \
            g[j] = EXP_##SUF(s[j] - m);                                                                 \
            if (j != yi) others = others + g[j];                                                        \
        }                                                                                               \
        T e_y = g[yi], total = others + e_y, scale = (T)1 / (tn * total);                               \
        for (Py_ssize_t j = 0; j < C; j++) g[j] = g[j] * scale;                                         \
        g[yi] = -others * scale;                                                                        \
        l = (double)(shift > -1 ? LOG1P_##SUF(others / e_y) : LOG_##SUF(total) - shift);                \
    }                                                                                                   \
    if (w != (T)1) {                                                                                    \
        for (Py_ssize_t j = 0; j < C; j++) g[j] = g[j] * w;                                             \
        l *= (double)w;                                                                                 \
    }                                                                                                   \
    *loss += l;                                                                                         \
    return any;                                                                                         \
}                                                                                                       \
                                                                                                        \
/* the lanes of x summed in double */                                                                   \
static inline double lanes_sum_##SUF(vec_##SUF x) {                                                     \
    double sum = 0;                                                                                     \
    for (int u = 0; u < LANES_##SUF; u++) sum += (double)x[u];                                          \
    return sum;                                                                                         \
}                                                                                                       \
                                                                                                        \
/* a vector of a column's w and of its v through the 2 x 2 map (m0 m1; m2 m3), in the one order the     \
 * step's passes and the catch-up all take: w' = w m0 + v m1, v' = v m3 + w m2 */                       \
static inline vec_##SUF map_w_##SUF(vec_##SUF w, vec_##SUF v, T m0, T m1) { return w * m0 + v * m1; }   \
static inline vec_##SUF map_v_##SUF(vec_##SUF w, vec_##SUF v, T m2, T m3) { return v * m3 + w * m2; }   \
                                                                                                        \
/* a column's gram sums (w.w, w.v, v.v, each in T lane by lane) with a vector of its w and v added;     \
 * gram_put: the sums into gram, in double */                                                           \
static inline void gram_add_##SUF(vec_##SUF sums[3], vec_##SUF w, vec_##SUF v) {                        \
    sums[0] = sums[0] + w * w, sums[1] = sums[1] + w * v, sums[2] = sums[2] + v * v;                    \
}                                                                                                       \
static inline void gram_put_##SUF(const vec_##SUF sums[3], double *gram) {                              \
    for (int u = 0; u < 3; u++) gram[u] = lanes_sum_##SUF(sums[u]);                                     \
}                                                                                                       \
                                                                                                        \
/* a column's w and v (P values each) brought through the 2 x 2 map m into wn and vn (which may be      \
 * w and v themselves) */                                                                               \
static inline void bring_##SUF(const T *w, const T *v, const double *m, T *wn, T *vn, Py_ssize_t P) {   \
    typedef vec_##SUF vec;                                                                              \
    T m0 = (T)m[0], m1 = (T)m[1], m2 = (T)m[2], m3 = (T)m[3];                                           \
    for (Py_ssize_t c = 0; c < P; c += LANES_##SUF) {                                                   \
        vec w0 = VEC(w + c), v0 = VEC(v + c);                                                           \
        VEC(wn + c) = map_w_##SUF(w0, v0, m0, m1);                                                      \
        VEC(vn + c) = map_v_##SUF(w0, v0, m2, m3);                                                      \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* gram = (w.w, w.v, v.v) of a column's w and v (P values each) */                                      \
static inline void gram_##SUF(const T *w, const T *v, Py_ssize_t P, double *gram) {                     \
    typedef vec_##SUF vec;                                                                              \
    vec sums[3] = {{0}, {0}, {0}};                                                                      \
    for (Py_ssize_t c = 0; c < P; c += LANES_##SUF) gram_add_##SUF(sums, VEC(w + c), VEC(v + c));       \
    gram_put_##SUF(sums, gram);                                                                         \
}                                                                                                       \
/* the record of the batch's column q (if 0 <= q < k), asked for before a pass reaches it */            \
static inline void ahead_##SUF(const SparseArgs *a, const char *Z, const int64_t *touched, Py_ssize_t q, \
                               Py_ssize_t k) {                                                          \
    if (q < 0 || q >= k) return;                                                                        \
    const char *rec = Z + touched[q] * a->rec.bytes;                                                    \
    /* (3 lines, unrolled: a record of 20 float32 classes; past a smaller one, its neighbour's) */      \
    PREFETCH(rec), PREFETCH(rec + 64), PREFETCH(rec + 128);                                             \
    for (Py_ssize_t o = 192; o < a->rec.bytes; o += 64) PREFETCH(rec + o);                              \
}                                                                                                       \
                                                                                                        \
/* the batch's columns in increasing order (touched; k of them, returned) and its entries column by     \
 * column, a column's in the batch's order of rows: column q's are end[q - 1] .. end[q] - 1 (end[-1]    \
 * = 0), each its row's place in the batch (at) and its value (x, times inv_std where given). The       \
 * columns are found through a bit each in `marks` (its set words' bits, in order, left clear) while     \
 * `count` (zero on the batch's columns: the caller's checks set it) counts each one's entries, then     \
 * holds where its next entry goes. */                                                                  \
static Py_ssize_t sparse_by_column_##SUF(const SparseArgs *a, const T *xdata, const T *inv_std,         \
                                         int64_t *touched, int64_t *end, int32_t *at, T *x) {           \
    const int32_t *ind = a->indices, *ptr = a->indptr;                                                  \
    int32_t *count = a->count;                                                                          \
    Py_ssize_t k = 0;                                                                                   \
    int32_t total = 0;                                                                                  \
    for (Py_ssize_t i = 0; i < a->n; i++)                                                               \
        for (int32_t p = ptr[a->rows[i]]; p < ptr[a->rows[i] + 1]; p++) {                               \
            a->marks[ind[p] >> 6] |= (uint64_t)1 << (ind[p] & 63);                                      \
            count[ind[p]]++;                                                                            \
        }                                                                                               \
    for (Py_ssize_t word = 0; word < (a->d + 63) / 64; word++) {                                        \
        uint64_t bits = a->marks[word];                                                                 \
        a->marks[word] = 0;                                                                             \
        for (; bits; bits &= bits - 1) {                                                                \
            Py_ssize_t j = word * 64 + __builtin_ctzll(bits);                                           \
            if (j >= a->d) break; /* (bits past d: not the batch's) */                                  \
            int32_t entries = count[j];                                                                 \
            count[j] = total;                                                                           \
            total += entries;                                                                           \
            touched[k++] = j;                                                                           \
        }                                                                                               \
    }                                                                                                   \
    for (Py_ssize_t i = 0; i < a->n; i++)                                                               \
        for (int32_t p = ptr[a->rows[i]]; p < ptr[a->rows[i] + 1]; p++) {                               \
            int32_t s = count[ind[p]]++;                                                                \
            at[s] = (int32_t)i;                                                                         \
            x[s] = inv_std ? xdata[p] * inv_std[ind[p]] : xdata[p];                                     \
        }                                                                                               \
    for (Py_ssize_t q = 0; q < k; q++) {                                                                \
        end[q] = count[touched[q]];                                                                     \
        count[touched[q]] = 0;                                                                          \
    }                                                                                                   \
    return k;                                                                                           \
}                                                                                                       \
                                                                                                        \
/* the scores' data term: each of the batch's columns brought from its last step to this one through    \
 * A[last] (its w alone; its record stays as it is until the update) and added, times each entry's      \
 * value, into the scores of the entry's row (S: n rows of P, from +0). nv: the vectors of a row,       \
 * taken 8 at a time; where the caller passes a constant, the column's w stays in registers. */         \
static inline __attribute__((always_inline)) void sparse_scores_##SUF(const SparseArgs *a, Py_ssize_t nv, \
    const char *Z, const int64_t *touched, Py_ssize_t k, const int64_t *end, const int32_t *at, const T *x, \
    T *S) {                                                                                             \
    typedef vec_##SUF vec;                                                                              \
    const Py_ssize_t P = a->rec.P, V = LANES_##SUF;                                                     \
    for (Py_ssize_t q = 0; q < k; q++) {                                                                \
        ahead_##SUF(a, Z, touched, q + AHEAD, k);                                                       \
        const char *rec = Z + touched[q] * a->rec.bytes;                                                \
        const T *w = (const T *)rec; /* (and its v, P values on) */                                     \
        const double *m = a->A + 4 * *(const int64_t *)(rec + a->rec.last);                             \
        const T m0 = (T)m[0], m1 = (T)m[1];                                                             \
        const int64_t lo = q ? end[q - 1] : 0, hi = end[q];                                             \
        for (Py_ssize_t u0 = 0; u0 < nv; u0 += 8) {                                                     \
            Py_ssize_t mm = nv - u0 < 8 ? nv - u0 : 8;                                                  \
            vec wq[8];                                                                                  \
            for (Py_ssize_t u = 0; u < mm; u++) {                                                       \
                const T *wu = w + (u0 + u) * V;                                                         \
                wq[u] = map_w_##SUF(VEC(wu), VEC(wu + P), m0, m1);                                      \
            }                                                                                           \
            for (int64_t s = lo; s < hi; s++) {                                                         \
                T *row = S + (Py_ssize_t)at[s] * P + u0 * V, xs = x[s];                                 \
                for (Py_ssize_t u = 0; u < mm; u++) VEC(row + u * V) = VEC(row + u * V) + xs * wq[u];   \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* each row's scores (S) plus b, its loss and dL/dS over them; live[i]: whether row i's dL/dS is not    \
 * all zero (a hinge row with no margin violated has none); db. Returns the summed loss. */             \
static double sparse_losses_##SUF(const SparseArgs *a, T *S, const T *bp, const T *sw, T *db, int32_t *live) { \
    typedef vec_##SUF vec;                                                                              \
    const Py_ssize_t C = a->C, P = a->rec.P, V = LANES_##SUF;                                           \
    double loss = 0;                                                                                    \
    for (Py_ssize_t c = 0; c < C; c++) db[c] = 0;                                                       \
    for (Py_ssize_t i = 0; i < a->n; i++) {                                                             \
        int64_t r = a->rows[i];                                                                         \
        T *s = S + i * P;                                                                               \
        for (Py_ssize_t c = 0; c < P; c += V) VEC(s + c) = VEC(s + c) + VEC(bp + c);                    \
        T wi = sw ? sw[r] : (T)1;                                                                       \
        live[i] = sparse_row_loss_##SUF(a->svm, C, (T)a->n, s, (Py_ssize_t)a->y[r], wi, &loss);         \
        for (Py_ssize_t c = 0; c < C; c++) db[c] = db[c] + s[c];                                        \
    }                                                                                                   \
    return loss;                                                                                        \
}                                                                                                       \
                                                                                                        \
/* the update of the batch's columns that have a data term in dW (an entry in a row whose dL/dS is      \
 * not zero): D, its entries' values times their rows' dL/dS (G, over S), the rows in order; the        \
 * column brought to this step through A[last] and g = lr (c w + D); v = mu v - g; w += v (Nesterov:    \
 * w - g + mu v) written to its record; its gram moved from its group to the next step's (the sums      \
 * taken out go to two banks by turns, so that one addition does not wait on the one before when        \
 * neighbouring columns share a group). A column without one keeps its record, its last step and        \
 * its group: the lazy update is its update. The columns in decreasing order: the scores' pass left     \
 * the last ones' records in the cache (and the next step's starts where this one ends). nv as          \
 * sparse_scores. */                                                                                    \
static inline __attribute__((always_inline)) void sparse_update_##SUF(const SparseArgs *a, Py_ssize_t nv, \
    char *Z, const int64_t *touched, Py_ssize_t k, const int64_t *end, const int32_t *at, const T *x,   \
    const T *G, const int32_t *live, double (*out_of)[3], double *into) {                               \
    typedef vec_##SUF vec;                                                                              \
    const Py_ssize_t P = a->rec.P, V = LANES_##SUF;                                                     \
    const T lr = (T)a->lr, mu = (T)a->mu, cc = (T)a->c;                                                 \
    const int nesterov = a->nesterov;                                                                   \
    const vec zero = {0};                                                                               \
    for (Py_ssize_t q = k - 1; q >= 0; q--) {                                                           \
        ahead_##SUF(a, Z, touched, q - AHEAD, k);                                                       \
        int64_t s0 = q ? end[q - 1] : 0;                                                                \
        const int64_t hi = end[q];                                                                      \
        while (s0 < hi && !live[at[s0]]) s0++;                                                          \
        if (s0 == hi) continue;                                                                         \
        char *rec = Z + touched[q] * a->rec.bytes;                                                      \
        T *w = (T *)rec, *v = w + P;                                                                    \
        int64_t *last = (int64_t *)(rec + a->rec.last);                                                 \
        double *gram = (double *)(rec + a->rec.gram), *bank = out_of[2 * *last + (q & 1)];              \
        bank[0] += gram[0], bank[1] += gram[1], bank[2] += gram[2];                                     \
        const double *m = a->A + 4 * *last;                                                             \
        const T m0 = (T)m[0], m1 = (T)m[1], m2 = (T)m[2], m3 = (T)m[3];                                 \
        vec sums[3] = {zero, zero, zero}; /* its new gram's, as gram_ adds them */                      \
        for (Py_ssize_t u0 = 0; u0 < nv; u0 += 8) {                                                     \
            Py_ssize_t mm = nv - u0 < 8 ? nv - u0 : 8;                                                  \
            vec D[8];                                                                                   \
            for (Py_ssize_t u = 0; u < mm; u++) D[u] = zero;                                            \
            for (int64_t s = s0; s < hi; s++) {                                                         \
                if (!live[at[s]]) continue;                                                             \
                const T *g = G + (Py_ssize_t)at[s] * P + u0 * V, xs = x[s];                             \
                for (Py_ssize_t u = 0; u < mm; u++) D[u] = D[u] + xs * VEC(g + u * V);                  \
            }                                                                                           \
            for (Py_ssize_t u = 0; u < mm; u++) {                                                       \
                T *wu = w + (u0 + u) * V, *vu = v + (u0 + u) * V;                                       \
                vec w0 = VEC(wu), v0 = VEC(vu);                                                         \
                vec wq = map_w_##SUF(w0, v0, m0, m1), vq = map_v_##SUF(w0, v0, m2, m3);                 \
                vec g = (wq * cc + D[u]) * lr, vn = vq * mu - g;                                        \
                vec wn = nesterov ? (wq - g) + vn * mu : wq + vn;                                       \
                VEC(vu) = vn;                                                                           \
                VEC(wu) = wn;                                                                           \
                gram_add_##SUF(sums, wn, vn);                                                           \
            }                                                                                           \
        }                                                                                               \
        gram_put_##SUF(sums, gram);                                                                     \
        *last = a->r + 1;                                                                               \
        into[0] += gram[0], into[1] += gram[1], into[2] += gram[2];                                     \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
static void sparse_step_##SUF(const SparseArgs *a, const T *xdata, const T *b, const T *inv_std,        \
                              const T *sw, char *Z, T *work, int64_t *iwork, T *db, double *out) {      \
    const Py_ssize_t P = a->rec.P, n = a->n, kmax = a->kmax, V = LANES_##SUF;                           \
    int64_t *touched = iwork, *end = iwork + kmax;                                                      \
    int32_t *at = (int32_t *)(iwork + 2 * kmax), *live = at + a->entries;                               \
    T *S = work, *bp = S + n * P, *x = bp + P;                                                          \
    Py_ssize_t k = sparse_by_column_##SUF(a, xdata, inv_std, touched, end, at, x);                      \
    /* ||W||^2 at this step, before its update: the groups' quadratic forms (every column brought to    \
     * this step from its last one, as the passes bring the batch's) */                                 \
    double norm2 = 0;                                                                                   \
    for (Py_ssize_t s = 0; s <= a->r; s++) {                                                            \
        double a0 = a->A[4 * s], a1 = a->A[4 * s + 1];                                                  \
        const double *g = a->groups + 3 * s;                                                            \
        norm2 += a0 * a0 * g[0] + 2 * a0 * a1 * g[1] + a1 * a1 * g[2];                                  \
    }                                                                                                   \
    /* the scores, column by column; then row by row the loss and dL/dS; then the update, column by     \
     * column: the records read in order twice, the rows' scores (a few dozen kB) at random */          \
    memset(S, 0, (size_t)(n * P) * sizeof(T));                                                          \
    BY_VECTORS(sparse_scores_##SUF, Z, touched, k, end, at, x, S)                                       \
    for (Py_ssize_t c = 0; c < P; c++) bp[c] = c < a->C ? b[c] : (T)0;                                  \
    double loss = sparse_losses_##SUF(a, S, bp, sw, db, live);                                          \
    double into[3] = {0, 0, 0}, out_of[2 * (a->r + 1)][3];                                              \
    memset(out_of, 0, sizeof out_of);                                                                   \
    BY_VECTORS(sparse_update_##SUF, Z, touched, k, end, at, x, S, live, out_of, into)                   \
    for (Py_ssize_t s = 0; s <= a->r; s++)                                                              \
        for (int u = 0; u < 3; u++) a->groups[3 * s + u] -= out_of[2 * s][u] + out_of[2 * s + 1][u];    \
    for (int u = 0; u < 3; u++) a->groups[3 * (a->r + 1) + u] += into[u];                               \
    advance_maps(a);                                                                                    \
    out[0] = loss / (double)n;                                                                          \
    out[1] = norm2;                                                                                     \
    out[2] = (double)k;                                                                                 \
}                                                                                                       \
/* every column brought from its last step to step r through A[last] (those already there as they       \
 * are), its gram recomputed and its last set to 0: the start of a new window; out: the grams' sums */  \
static void sparse_catch_up_##SUF(const Layout *l, Py_ssize_t d, char *Z, const double *A, Py_ssize_t r, \
                                  double *out) {                                                        \
    const Py_ssize_t P = l->P;                                                                          \
    double total[3] = {0, 0, 0};                                                                        \
    for (Py_ssize_t j = 0; j < d; j++) {                                                                \
        char *rec = Z + j * l->bytes;                                                                   \
        T *w = (T *)rec, *v = w + P;                                                                    \
        int64_t *last = (int64_t *)(rec + l->last);                                                     \
        double *gram = (double *)(rec + l->gram);                                                       \
        if (*last != r) bring_##SUF(w, v, A + 4 * *last, w, v, P);                                      \
        gram_##SUF(w, v, P, gram);                                                                      \
        *last = 0;                                                                                      \
        total[0] += gram[0], total[1] += gram[1], total[2] += gram[2];                                  \
    }                                                                                                   \
    for (int u = 0; u < 3; u++) out[u] = total[u];                                                      \
}

DEFINE_SPARSE(float, f32)
DEFINE_SPARSE(double, f64)

/* ---- the module's functions ---------------------------------------------------------------------- */

/* `count` values of `itemsize` bytes of scratch for the caller to free, or NULL with MemoryError set
 * and `held` released */
static void *scratch(Held *held, Py_ssize_t count, Py_ssize_t itemsize) {
    void *p = malloc((size_t)count * itemsize);
    if (p == NULL) {
        release(held);
        PyErr_NoMemory();
    }
    return p;
}

static int item_of(PyObject *obj, Py_ssize_t *itemsize) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_ND) < 0) return -1;
    *itemsize = view.itemsize;
    PyBuffer_Release(&view);
    if (*itemsize != 4 && *itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "expected float32 or float64 arrays");
        return -1;
    }
    return 0;
}

static PyObject *py_layer_forward(PyObject *self, PyObject *args) {
    PyObject *o[10];
    Py_ssize_t n, m;
    double momentum, eps;
    if (!PyArg_ParseTuple(args, "nnOOOOOOddOOO", &n, &m, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &momentum,
                          &eps, &o[6], &o[7], &o[8]))
        return NULL;
    Py_ssize_t isz;
    if (n < 2 && o[2] != Py_None) {
        PyErr_SetString(PyExc_ValueError, "layer_forward: batch norm needs n >= 2");
        return NULL;
    }
    if (item_of(o[0], &isz) < 0) return NULL;
    Held held = {.count = 0};
    void *s = data_of(&held, o[0], n * m, isz, 1, 0, "s", NULL);
    void *b = s ? data_of(&held, o[1], m, isz, 0, 0, "b", NULL) : NULL;
    void *gamma = b ? data_of(&held, o[2], m, isz, 0, 1, "gamma", NULL) : NULL;
    int bn = gamma != NULL;
    void *beta = bn ? data_of(&held, o[3], m, isz, 0, 0, "beta", NULL) : NULL;
    void *rm = (bn && beta) ? data_of(&held, o[4], m, isz, 1, 1, "running_mean", NULL) : NULL;
    void *rv = rm ? data_of(&held, o[5], m, isz, 1, 0, "running_var", NULL) : NULL;
    void *h = (b && !PyErr_Occurred()) ? data_of(&held, o[6], n * m, isz, 1, 0, "h", NULL) : NULL;
    void *xhat = (bn && h) ? data_of(&held, o[7], n * m, isz, 1, 0, "xhat", NULL) : NULL;
    void *inv = (bn && xhat) ? data_of(&held, o[8], m, isz, 1, 0, "inv_std", NULL) : NULL;
    if (PyErr_Occurred() || (rm != NULL && rv == NULL)) {
        release(&held);
        return NULL;
    }
    void *work = bn ? scratch(&held, 2 * m, isz) : NULL; /* the batch mean and variance */
    if (bn && work == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        layer_forward_f32(n, m, s, b, gamma, beta, rm, rv, momentum, eps, h, xhat, inv, work,
                          work ? (float *)work + m : NULL);
    else
        layer_forward_f64(n, m, s, b, gamma, beta, rm, rv, momentum, eps, h, xhat, inv, work,
                          work ? (double *)work + m : NULL);
    Py_END_ALLOW_THREADS
    free(work);
    release(&held);
    Py_RETURN_NONE;
}

static PyObject *py_layer_backward(PyObject *self, PyObject *args) {
    PyObject *o[8];
    Py_ssize_t n, m;
    if (!PyArg_ParseTuple(args, "nnOOOOOOOO", &n, &m, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7]))
        return NULL;
    Py_ssize_t isz;
    if (item_of(o[0], &isz) < 0) return NULL;
    Held held = {.count = 0};
    void *g = data_of(&held, o[0], n * m, isz, 1, 0, "dh", NULL);
    void *h = g ? data_of(&held, o[1], n * m, isz, 0, 1, "h", NULL) : NULL;
    void *gamma = PyErr_Occurred() ? NULL : data_of(&held, o[3], m, isz, 0, 1, "gamma", NULL);
    int bn = gamma != NULL;
    void *xhat = bn ? data_of(&held, o[2], n * m, isz, 0, 0, "xhat", NULL) : NULL;
    void *inv = (bn && xhat) ? data_of(&held, o[4], m, isz, 0, 0, "inv_std", NULL) : NULL;
    void *dgamma = (bn && inv) ? data_of(&held, o[5], m, isz, 1, 0, "dgamma", NULL) : NULL;
    void *dbeta = (bn && dgamma) ? data_of(&held, o[6], m, isz, 1, 0, "dbeta", NULL) : NULL;
    void *db = PyErr_Occurred() ? NULL : data_of(&held, o[7], m, isz, 1, 0, "db", NULL);
    if (PyErr_Occurred()) {
        release(&held);
        return NULL;
    }
    void *work = bn ? scratch(&held, 3 * m, isz) : NULL; /* two column sums and inv_std / n */
    if (bn && work == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        layer_backward_f32(n, m, g, h, xhat, gamma, inv, dgamma, dbeta, db, work, work ? (float *)work + m : NULL);
    else
        layer_backward_f64(n, m, g, h, xhat, gamma, inv, dgamma, dbeta, db, work, work ? (double *)work + m : NULL);
    Py_END_ALLOW_THREADS
    free(work);
    release(&held);
    Py_RETURN_NONE;
}

static PyObject *py_update(PyObject *self, PyObject *args) {
    int rule;
    PyObject *o[4], *hyper;
    Py_ssize_t size, nd;
    double c2, hp[6] = {0};
    if (!PyArg_ParseTuple(args, "inndOOOOO", &rule, &size, &nd, &c2, &o[0], &o[1], &o[2], &o[3], &hyper))
        return NULL;
    if (rule < 0 || rule > 3 || nd < 0 || nd > size) {
        PyErr_SetString(PyExc_ValueError, "update: bad rule or n_decay");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(hyper, "update: hyperparameters must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq), want = rule == 0 ? 1 : (rule == 3 ? 6 : 2);
    if (nh != want) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "update: rule %d takes %zd hyperparameters, got %zd", rule, want, nh);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nh; k++) {
        hp[k] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, k));
        if (hp[k] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_ssize_t isz;
    if (item_of(o[0], &isz) < 0) return NULL;
    Held held = {.count = 0};
    void *p = data_of(&held, o[0], size, isz, 1, 0, "p", NULL);
    void *g = p ? data_of(&held, o[1], size, isz, 1, 0, "g", NULL) : NULL;
    void *s1 = (g && rule > 0) ? data_of(&held, o[2], size, isz, 1, 0, "slot 0", NULL) : NULL;
    void *s2 = (s1 && rule == 3) ? data_of(&held, o[3], size, isz, 1, 0, "slot 1", NULL) : NULL;
    if (PyErr_Occurred()) {
        release(&held);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        update_f32(rule, size, nd, c2, p, g, s1, s2, hp);
    else
        update_f64(rule, size, nd, c2, p, g, s1, s2, hp);
    Py_END_ALLOW_THREADS
    release(&held);
    Py_RETURN_NONE;
}

static PyObject *py_softmax_ce(PyObject *self, PyObject *args) {
    PyObject *o[3];
    Py_ssize_t n, C;
    if (!PyArg_ParseTuple(args, "nnOOO", &n, &C, &o[0], &o[1], &o[2])) return NULL;
    if (n < 1 || C < 1) {
        PyErr_SetString(PyExc_ValueError, "softmax_ce: empty scores");
        return NULL;
    }
    Py_ssize_t isz;
    if (item_of(o[0], &isz) < 0) return NULL;
    Held held = {.count = 0};
    void *S = data_of(&held, o[0], n * C, isz, 0, 0, "S", NULL);
    void *dS = S ? data_of(&held, o[2], n * C, isz, 1, 0, "dS", NULL) : NULL;
    const int64_t *y = dS ? ints_of(&held, o[1], n, 8, "ql", 0, "y", NULL) : NULL;
    if (y == NULL) {
        release(&held);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= C) {
            release(&held);
            PyErr_Format(PyExc_ValueError, "softmax_ce: label %lld of row %zd is not in [0, %zd)", (long long)y[i],
                         i, C);
            return NULL;
        }
    double loss;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        loss = softmax_ce_f32(n, C, S, y, dS, ex_f32, lg_f32, lg1p_f32);
    else
        loss = softmax_ce_f64(n, C, S, y, dS, ex_f64, lg_f64, lg1p_f64);
    Py_END_ALLOW_THREADS
    release(&held);
    return PyFloat_FromDouble(loss);
}

static PyObject *py_sparse_step(PyObject *self, PyObject *args) {
    PyObject *o[16];
    SparseArgs a;
    if (!PyArg_ParseTuple(args, "nnnOOOOOOOOOOOOnOdddiiOOO", &a.C, &a.n, &a.d, &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &a.r, &o[12], &a.lr, &a.mu, &a.c,
                          &a.nesterov, &a.svm, &o[13], &o[14], &o[15]))
        return NULL;
    Py_ssize_t C = a.C, n = a.n, d = a.d;
    if (C < 1 || n < 1 || d < 1 || d > INT32_MAX || a.r < 0 || a.r > 4096) {
        PyErr_SetString(PyExc_ValueError, "sparse_step: empty batch, classes or columns, or r out of range");
        return NULL;
    }
    Py_ssize_t isz;
    if (item_of(o[6], &isz) < 0) return NULL;
    a.rec = record_layout(C, isz);
    Held held = {.count = 0};
    /* X's CSR arrays; indptr's length says how many rows X has */
    Py_ssize_t N;
    a.indptr = ints_of(&held, o[2], 1, 4, "i", 0, "X.indptr", &N);
    if (a.indptr == NULL) {
        release(&held);
        return NULL;
    }
    N -= 1;
    Py_ssize_t nnz = a.indptr[N];
    const void *xdata = data_of(&held, o[0], nnz, isz, 0, 0, "X.data", NULL);
    a.indices = xdata ? ints_of(&held, o[1], nnz, 4, "i", 0, "X.indices", NULL) : NULL;
    a.rows = a.indices ? ints_of(&held, o[3], n, 8, "ql", 0, "rows", NULL) : NULL;
    a.y = a.rows ? ints_of(&held, o[4], N, 8, "ql", 0, "y", NULL) : NULL;
    const void *sw = (a.y && o[5] != Py_None) ? data_of(&held, o[5], N, isz, 0, 0, "sample_weight", NULL) : NULL;
    const void *b = PyErr_Occurred() ? NULL : data_of(&held, o[6], C, isz, 0, 0, "b", NULL);
    const void *inv_std = (b && o[7] != Py_None) ? data_of(&held, o[7], d, isz, 0, 0, "inv_std", NULL) : NULL;
    Py_ssize_t zbytes = 0;
    char *Z = PyErr_Occurred() ? NULL : ints_of(&held, o[8], d * a.rec.bytes, 1, "B", 1, "Z", &zbytes);
    if (Z != NULL && (zbytes != d * a.rec.bytes || (uintptr_t)Z % 8)) {
        PyErr_Format(PyExc_ValueError, "sparse_step: Z must be d = %zd records of %zd bytes at an 8-byte boundary",
                     d, a.rec.bytes);
        Z = NULL;
    }
    a.marks = Z ? ints_of(&held, o[9], (d + 63) / 64, 8, "QL", 1, "marks", NULL) : NULL;
    a.count = a.marks ? ints_of(&held, o[10], d, 4, "i", 1, "count", NULL) : NULL;
    Py_ssize_t have[4] = {0, 0, 0, 0}; /* the lengths of groups, work, iwork and A, in values */
    a.A = a.count ? data_of(&held, o[11], -1, 8, 1, 0, "A", &have[3]) : NULL;
    a.groups = a.A ? data_of(&held, o[12], -1, 8, 1, 0, "groups", &have[0]) : NULL;
    void *work = a.groups ? data_of(&held, o[13], -1, isz, 1, 0, "work", &have[1]) : NULL;
    int64_t *iwork = work ? ints_of(&held, o[14], 0, 8, "ql", 1, "iwork", &have[2]) : NULL;
    void *db = iwork ? data_of(&held, o[15], C, isz, 1, 0, "db", NULL) : NULL;
    if (db == NULL) {
        release(&held);
        return NULL;
    }
    for (Py_ssize_t w = 0; w < (d + 63) / 64; w++) /* (a set bit would be a column outside the batch) */
        if (a.marks[w]) {
            release(&held);
            PyErr_SetString(PyExc_ValueError, "sparse_step: marks must be zeros (as the step leaves them)");
            return NULL;
        }
    /* every row, label and column of the batch in range and the scratch large enough, before any write */
    Py_ssize_t entries = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = a.rows[i];
        if (r < 0 || r >= N || a.y[r] < 0 || a.y[r] >= C || a.indptr[r] < 0 || a.indptr[r] > a.indptr[r + 1] ||
            a.indptr[r + 1] > nnz) {
            release(&held);
            PyErr_Format(PyExc_ValueError, "sparse_step: row %lld, its label or its row pointers out of range",
                         (long long)r);
            return NULL;
        }
        for (int32_t p = a.indptr[r]; p < a.indptr[r + 1]; p++) {
            if (a.indices[p] < 0 || a.indices[p] >= d) {
                release(&held);
                PyErr_Format(PyExc_ValueError, "sparse_step: column %d of row %lld out of range", a.indices[p],
                             (long long)r);
                return NULL;
            }
            a.count[a.indices[p]] = 0; /* (scratch: the batch's columns counted from zero) */
        }
        entries += a.indptr[r + 1] - a.indptr[r];
    }
    a.kmax = entries < d ? entries : d;
    a.entries = entries;
    Py_ssize_t twork, tiwork;
    scratch_sizes(C, isz, n, entries, d, &twork, &tiwork);
    if (have[0] < 3 * (a.r + 2) || have[1] < twork || have[2] < tiwork || have[3] < 4 * (a.r + 2)) {
        release(&held);
        PyErr_Format(PyExc_ValueError, "sparse_step: groups and A need %zd rows of 3 and 2 x 2, work %zd values, "
                     "iwork %zd", a.r + 2, twork, tiwork);
        return NULL;
    }
    double out[3];
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        sparse_step_f32(&a, xdata, b, inv_std, sw, Z, work, iwork, db, out);
    else
        sparse_step_f64(&a, xdata, b, inv_std, sw, Z, work, iwork, db, out);
    Py_END_ALLOW_THREADS
    release(&held);
    return Py_BuildValue("ddn", out[0], out[1], (Py_ssize_t)out[2]);
}

static PyObject *py_sparse_catch_up(PyObject *self, PyObject *args) {
    Py_ssize_t C, d, isz, r;
    PyObject *oz, *oa;
    if (!PyArg_ParseTuple(args, "nnnOOn", &C, &d, &isz, &oz, &oa, &r)) return NULL;
    if (C < 1 || d < 1 || (isz != 4 && isz != 8) || r < 0) {
        PyErr_SetString(PyExc_ValueError, "sparse_catch_up: C >= 1, d >= 1, itemsize 4 or 8, r >= 0");
        return NULL;
    }
    Layout rec = record_layout(C, isz);
    Held held = {.count = 0};
    Py_ssize_t zbytes = 0;
    char *Z = ints_of(&held, oz, d * rec.bytes, 1, "B", 1, "Z", &zbytes);
    const double *A = Z ? data_of(&held, oa, 4 * (r + 1), 8, 0, 0, "A", NULL) : NULL;
    if (Z != NULL && (zbytes != d * rec.bytes || (uintptr_t)Z % 8)) {
        PyErr_Format(PyExc_ValueError, "sparse_catch_up: Z must be d = %zd records of %zd bytes at an 8-byte boundary",
                     d, rec.bytes);
        A = NULL;
    }
    if (A == NULL) {
        release(&held);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < d; j++) { /* every last step in range, before any write */
        int64_t s = *(const int64_t *)(Z + j * rec.bytes + rec.last);
        if (s < 0 || s > r) {
            release(&held);
            PyErr_Format(PyExc_ValueError, "sparse_catch_up: column %zd's last step %lld is not in 0..%zd", j,
                         (long long)s, r);
            return NULL;
        }
    }
    double out[3];
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        sparse_catch_up_f32(&rec, d, Z, A, r, out);
    else
        sparse_catch_up_f64(&rec, d, Z, A, r, out);
    Py_END_ALLOW_THREADS
    release(&held);
    return Py_BuildValue("ddd", out[0], out[1], out[2]);
}

static PyObject *py_sparse_scratch(PyObject *self, PyObject *args) {
    Py_ssize_t C, itemsize, n, e, d, work, iwork;
    if (!PyArg_ParseTuple(args, "nnnnn", &C, &itemsize, &n, &e, &d)) return NULL;
    if (C < 1 || (itemsize != 4 && itemsize != 8) || n < 0 || e < 0 || d < 1) {
        PyErr_SetString(PyExc_ValueError, "sparse_scratch: C >= 1, itemsize 4 or 8, n, e >= 0, d >= 1");
        return NULL;
    }
    scratch_sizes(C, itemsize, n, e, d, &work, &iwork);
    return Py_BuildValue("nn", work, iwork);
}

static PyObject *py_record_layout(PyObject *self, PyObject *args) {
    Py_ssize_t C, itemsize;
    if (!PyArg_ParseTuple(args, "nn", &C, &itemsize)) return NULL;
    if (C < 1 || (itemsize != 4 && itemsize != 8)) {
        PyErr_SetString(PyExc_ValueError, "record_layout: C >= 1 and itemsize 4 or 8");
        return NULL;
    }
    Layout rec = record_layout(C, itemsize);
    return Py_BuildValue("nnnn", rec.P, rec.bytes, rec.gram, rec.last);
}

static PyMethodDef methods[] = {
    {"sparse_step", py_sparse_step, METH_VARARGS,
     "sparse_step(C, n, d, X.data, X.indices, X.indptr, rows, y, sample_weight, b, inv_std, Z, marks, count, A, r, "
     "groups, lr, mu, 2 lam, nesterov, svm, work, iwork, db) -> (loss, ||W||^2 before the step, the batch's column "
     "count); Z: d records (uint8) as record_layout(C, itemsize) says; work and iwork as sparse_scratch says"},
    {"sparse_catch_up", py_sparse_catch_up, METH_VARARGS,
     "sparse_catch_up(C, d, itemsize, Z, A, r) -> the sums of the columns' (w.w, w.v, v.v): every column of Z "
     "brought from its last step to step r through A[last], its gram recomputed, its last set to 0"},
    {"sparse_scratch", py_sparse_scratch, METH_VARARGS,
     "sparse_scratch(C, itemsize, n, e, d) -> (work, iwork): the scratch values sparse_step takes for a batch of "
     "n rows and e entries among d columns"},
    {"record_layout", py_record_layout, METH_VARARGS,
     "record_layout(C, itemsize) -> (P, bytes, gram, last): a column's record in sparse_step's Z, its rows of W^T "
     "and V^T padded to P values, its size in bytes and the byte offsets of its gram (3 doubles) and last (int64)"},
    {"softmax_ce", py_softmax_ce, METH_VARARGS, "softmax_ce(n, C, S, y, dS) -> the mean loss; dS = (P - Y) / n"},
    {"layer_forward", py_layer_forward, METH_VARARGS,
     "layer_forward(n, m, s, b, gamma, beta, running_mean, running_var, momentum, eps, h, xhat, inv_std)"},
    {"layer_backward", py_layer_backward, METH_VARARGS,
     "layer_backward(n, m, dh, h, xhat, gamma, inv_std, dgamma, dbeta, db)"},
    {"update", py_update, METH_VARARGS,
     "update(rule (0 sgd, 1 momentum, 2 nesterov, 3 adam), size, n_decay, 2 lam, p, g, slot0, slot1, "
     "hyperparameters)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gpugrad_host",
                                    "gpugrad's fused CPU loops (see gpugrad/backends/host.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__gpugrad_host(void) { return PyModule_Create(&module); }
