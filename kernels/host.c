/* _gpugrad_host: the numpy backend's fused functions as compiled loops, for the CPU.
 *
 * A training step of a small MLP spends more time in numpy's per-call overhead than in the
 * arithmetic of its elementwise chains: NumpyBackend.layer_forward is ~20 numpy calls on a
 * (100, 50) array, each a few microseconds. Here each of those functions is one pass (or a few)
 * over its arrays in one call, the way kernels/mlp.cuh runs them as one kernel each on a card.
 *
 * Every function does numpy's arithmetic in numpy's order, so it gives the numpy code's results
 * bit for bit (tests/test_host.py compares them):
 * - each elementwise operation is rounded to the array's type (T, float or double) on its own:
 *   built with -ffp-contract=off (no fused multiply-add) and without -ffast-math;
 * - a Python float operand (eps, momentum, the optimiser's hyperparameters) is rounded to T
 *   first, as numpy 2 does with a Python scalar (NEP 50);
 * - a column sum of a C-contiguous (n, m) array, m >= 2, adds the rows one after the other,
 *   starting from row 0, as numpy's add.reduce(axis=0) does (for m = 1 numpy sums pairwise; the
 *   Python side keeps such shapes on numpy).
 * The Python side (gpugrad/backends/host.py) checks types, shapes and contiguity before calling.
 *
 * Array arguments are objects with the buffer protocol (numpy arrays) or None where optional.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* ---- arguments ------------------------------------------------------------------------------ */

typedef struct {
    Py_buffer views[12];
    int count;
} Held;

static void release(Held *held) {
    for (int i = 0; i < held->count; i++) PyBuffer_Release(&held->views[i]);
    held->count = 0;
}

/* The data of a C-contiguous array of `size` items of `itemsize` bytes (NULL, with an exception
 * set, when it is not one); NULL without an exception for None when `optional`. */
static void *data_of(Held *held, PyObject *obj, Py_ssize_t size, Py_ssize_t itemsize, int writable,
                     int optional, const char *name) {
    if (obj == Py_None) {
        if (optional) return NULL;
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    Py_buffer *view = &held->views[held->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return NULL;
    held->count++;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char want = itemsize == 4 ? 'f' : 'd';
    if (view->itemsize != itemsize || f[0] != want || f[1] != '\0' || view->len != size * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd values of type %c, got %zd of type %s", name, size,
                     want, view->len / (view->itemsize ? view->itemsize : 1), view->format ? view->format : "B");
        return NULL;
    }
    return view->buf;
}

/* ---- the loops, once for each type ------------------------------------------------------------ */

#define DEFINE_LOOPS(T, SUF)                                                                            \
/* out[j] = sum_i a[i, j] (rows in order, from row 0), a (n, m) */                                     \
static void colsum_##SUF(Py_ssize_t n, Py_ssize_t m, const T *restrict a, T *restrict out) {                             \
    memcpy(out, a, (size_t)m * sizeof(T));                                                             \
    for (Py_ssize_t i = 1; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) out[j] = out[j] + a[i * m + j];                             \
}                                                                                                       \
/* out[j] = sum_i a[i, j] * b[i, j], each product rounded before it is added */                        \
static void colsum_prod_##SUF(Py_ssize_t n, Py_ssize_t m, const T *restrict a, const T *restrict b,  \
                               T *restrict out) {           \
    for (Py_ssize_t j = 0; j < m; j++) out[j] = a[j] * b[j];                                            \
    for (Py_ssize_t i = 1; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) out[j] = out[j] + a[i * m + j] * b[i * m + j];             \
}                                                                                                       \
/* np.maximum(x, 0): NaN stays NaN */                                                                  \
static inline T relu_##SUF(T x) { return (x > 0 || x != x) ? x : (T)0; }                              \
                                                                                                        \
/* NumpyBackend.layer_forward: s += b; then h = relu(s), or batch norm and relu (see there). */       \
static void layer_forward_##SUF(Py_ssize_t n, Py_ssize_t m, T *restrict s, const T *restrict b,       \
                                const T *restrict gamma, const T *restrict beta, T *restrict rm,       \
                                T *restrict rv, double momentum, double eps, T *restrict h,            \
                                T *restrict xhat, T *restrict inv, T *restrict mu, T *restrict var) {                                       \
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
        v = (T)sqrt((double)v); /* the square root of a float, rounded once: sqrtf's value */          \
        inv[j] = (T)1 / v;                                                                              \
    }                                                                                                   \
    for (Py_ssize_t i = 0; i < n; i++)                                                                  \
        for (Py_ssize_t j = 0; j < m; j++) xhat[i * m + j] = xhat[i * m + j] * inv[j];                  \
    if (rm != NULL) {                                                                                   \
        T keep = (T)(1 - momentum), take = (T)momentum, unbias = (T)((double)n / (double)(n - 1));     \
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
/* NumpyBackend.layer_backward: g = dh [h > 0] in place, then the batch-norm VJP (see there). */      \
static void layer_backward_##SUF(Py_ssize_t n, Py_ssize_t m, T *restrict g, const T *restrict h,       \
                                 const T *restrict xhat, const T *restrict gamma,                      \
                                 const T *restrict inv, T *restrict dgamma, T *restrict dbeta,         \
                                 T *restrict db, T *restrict sg, T *restrict sgx) {                                                              \
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
/* NumpyBackend.optimizer_update's rules after the penalty, g[:nd] += p[:nd] (2 lam). */              \
static double update_##SUF(int rule, Py_ssize_t size, Py_ssize_t nd, double c2, T *restrict p,          \
                         T *restrict g, T *restrict s1, T *restrict s2, const double *restrict hp) {                                                     \
    /* ||p[:nd]||^2 before the step, for the step's cost: in double, 8 sums side by side (one           \
     * would wait on each addition's latency) */                                                        \
    double part[8] = {0}, norm2 = 0;                                                                    \
    if (nd > 0) {                                                                                       \
        T c = (T)c2;                                                                                    \
        Py_ssize_t k = 0;                                                                               \
        for (; k + 8 <= nd; k += 8)                                                                     \
            for (int u = 0; u < 8; u++) {                                                               \
                part[u] += (double)p[k + u] * (double)p[k + u];                                         \
                g[k + u] = g[k + u] + p[k + u] * c;                                                     \
            }                                                                                           \
        for (; k < nd; k++) {                                                                           \
            norm2 += (double)p[k] * (double)p[k];                                                       \
            g[k] = g[k] + p[k] * c;                                                                     \
        }                                                                                               \
        for (int u = 0; u < 8; u++) norm2 += part[u];                                                   \
    }                                                                                                   \
    if (rule == 0) { /* sgd: p -= lr g */                                                               \
        T lr = (T)hp[0];                                                                                \
        for (Py_ssize_t k = 0; k < size; k++) p[k] = p[k] - g[k] * lr;                                  \
    } else if (rule == 1 || rule == 2) { /* momentum: v = mu v - lr g; p += v (Nesterov: mu v - lr g) */\
        T lr = (T)hp[0], mu = (T)hp[1];                                                                 \
        for (Py_ssize_t k = 0; k < size; k++) {                                                         \
            T step = g[k] * lr;                                                                         \
            T v = s1[k] * mu - step;                                                                    \
            s1[k] = v;                                                                                  \
            p[k] = p[k] + (rule == 2 ? v * mu - step : v);                                              \
        }                                                                                               \
    } else { /* adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= a m / (sqrt(v) + e) */     \
        T b1 = (T)hp[0], c1 = (T)hp[1], b2 = (T)hp[2], cb2 = (T)hp[3], a = (T)hp[4], e = (T)hp[5];      \
        for (Py_ssize_t k = 0; k < size; k++) {                                                         \
            T mk = s1[k] * b1 + g[k] * c1;                                                              \
            T gg = g[k] * g[k];                                                                         \
            T vk = s2[k] * b2 + gg * cb2;                                                               \
            s1[k] = mk;                                                                                 \
            s2[k] = vk;                                                                                 \
            T den = (T)sqrt((double)vk) + e;                                                            \
            p[k] = p[k] - (mk * a) / den;                                                               \
        }                                                                                               \
    }                                                                                                   \
    return norm2;                                                                                       \
}

DEFINE_LOOPS(float, f32)
DEFINE_LOOPS(double, f64)

static float ex_f32(float x) { return expf(x); }
static float lg_f32(float x) { return logf(x); }
static float lg1p_f32(float x) { return log1pf(x); }
static double ex_f64(double x) { return exp(x); }
static double lg_f64(double x) { return log(x); }
static double lg1p_f64(double x) { return log1p(x); }

/* ---- the module's functions ---------------------------------------------------------------------- */

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
    void *s = data_of(&held, o[0], n * m, isz, 1, 0, "s");
    void *b = s ? data_of(&held, o[1], m, isz, 0, 0, "b") : NULL;
    void *gamma = b ? data_of(&held, o[2], m, isz, 0, 1, "gamma") : NULL;
    int bn = gamma != NULL;
    void *beta = bn ? data_of(&held, o[3], m, isz, 0, 0, "beta") : NULL;
    void *rm = (bn && beta) ? data_of(&held, o[4], m, isz, 1, 1, "running_mean") : NULL;
    void *rv = rm ? data_of(&held, o[5], m, isz, 1, 0, "running_var") : NULL;
    void *h = (b && !PyErr_Occurred()) ? data_of(&held, o[6], n * m, isz, 1, 0, "h") : NULL;
    void *xhat = (bn && h) ? data_of(&held, o[7], n * m, isz, 1, 0, "xhat") : NULL;
    void *inv = (bn && xhat) ? data_of(&held, o[8], m, isz, 1, 0, "inv_std") : NULL;
    if (PyErr_Occurred() || (rm != NULL && rv == NULL)) {
        release(&held);
        return NULL;
    }
    void *work = bn ? malloc((size_t)(2 * m) * isz) : NULL;
    if (bn && work == NULL) {
        release(&held);
        return PyErr_NoMemory();
    }
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
    void *g = data_of(&held, o[0], n * m, isz, 1, 0, "dh");
    void *h = g ? data_of(&held, o[1], n * m, isz, 0, 1, "h") : NULL;
    void *gamma = PyErr_Occurred() ? NULL : data_of(&held, o[3], m, isz, 0, 1, "gamma");
    int bn = gamma != NULL;
    void *xhat = bn ? data_of(&held, o[2], n * m, isz, 0, 0, "xhat") : NULL;
    void *inv = (bn && xhat) ? data_of(&held, o[4], m, isz, 0, 0, "inv_std") : NULL;
    void *dgamma = (bn && inv) ? data_of(&held, o[5], m, isz, 1, 0, "dgamma") : NULL;
    void *dbeta = (bn && dgamma) ? data_of(&held, o[6], m, isz, 1, 0, "dbeta") : NULL;
    void *db = PyErr_Occurred() ? NULL : data_of(&held, o[7], m, isz, 1, 0, "db");
    if (PyErr_Occurred()) {
        release(&held);
        return NULL;
    }
    void *work = bn ? malloc((size_t)(3 * m) * isz) : NULL;
    if (bn && work == NULL) {
        release(&held);
        return PyErr_NoMemory();
    }
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
    void *p = data_of(&held, o[0], size, isz, 1, 0, "p");
    void *g = p ? data_of(&held, o[1], size, isz, 1, 0, "g") : NULL;
    void *s1 = (g && rule > 0) ? data_of(&held, o[2], size, isz, 1, 0, "slot 0") : NULL;
    void *s2 = (s1 && rule == 3) ? data_of(&held, o[3], size, isz, 1, 0, "slot 1") : NULL;
    if (PyErr_Occurred()) {
        release(&held);
        return NULL;
    }
    double norm2;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        norm2 = update_f32(rule, size, nd, c2, p, g, s1, s2, hp);
    else
        norm2 = update_f64(rule, size, nd, c2, p, g, s1, s2, hp);
    Py_END_ALLOW_THREADS
    release(&held);
    return PyFloat_FromDouble(norm2);
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
    void *S = data_of(&held, o[0], n * C, isz, 0, 0, "S");
    void *dS = S ? data_of(&held, o[2], n * C, isz, 1, 0, "dS") : NULL;
    Py_buffer *yv = &held.views[held.count];
    if (dS == NULL || PyObject_GetBuffer(o[1], yv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        release(&held);
        return NULL;
    }
    held.count++;
    const char *f = yv->format ? yv->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (yv->itemsize != 8 || (f[0] != 'q' && f[0] != 'l') || f[1] != '\0' || yv->len != n * 8) {
        release(&held);
        PyErr_SetString(PyExc_ValueError, "softmax_ce: y must be n int64 labels");
        return NULL;
    }
    const int64_t *y = yv->buf;
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

static PyMethodDef methods[] = {
    {"softmax_ce", py_softmax_ce, METH_VARARGS, "softmax_ce(n, C, S, y, dS) -> the mean loss; dS = (P - Y) / n"},
    {"layer_forward", py_layer_forward, METH_VARARGS,
     "layer_forward(n, m, s, b, gamma, beta, running_mean, running_var, momentum, eps, h, xhat, inv_std)"},
    {"layer_backward", py_layer_backward, METH_VARARGS,
     "layer_backward(n, m, dh, h, xhat, gamma, inv_std, dgamma, dbeta, db)"},
    {"update", py_update, METH_VARARGS,
     "update(rule (0 sgd, 1 momentum, 2 nesterov, 3 adam), size, n_decay, 2 lam, p, g, slot0, slot1, "
     "hyperparameters) -> ||p[:n_decay]||^2 before the step"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gpugrad_host",
                                    "gpugrad's fused CPU loops (see gpugrad/backends/host.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__gpugrad_host(void) { return PyModule_Create(&module); }
