"""Synthetic text-like sparse data for the sparse benchmarks: TF-IDF rows of Zipf-distributed words.

``make_text(rows, cols, nnz, classes, seed)`` draws documents the way bag-of-words data look:

- a vocabulary of ``cols`` words whose frequencies follow Zipf's law (p_k ~ 1 / k^1.1 for the
  word of rank k), so a few words are in almost every document and most are rare;
- each class c has its own word distribution: the Zipf frequencies times exp(sigma z_ck), z
  standard normal per class and word (``sigma`` sets how far apart the classes are, hence the
  accuracy a linear model reaches);
- a document of class c draws Poisson(1.6 nnz) words from its class's distribution (repeats
  collapse into counts, about ``nnz`` distinct words a row), and its values are TF-IDF:
  (1 + log count) * (log((1 + n) / (1 + df)) + 1), each row scaled to unit length, as
  scikit-learn's TfidfVectorizer(sublinear_tf=True) gives them.

CSR, float64 values, int32 indices, canonical (sorted, no duplicates).

    >>> X, y = make_text(200, 1000, 20, 4, seed=0)
    >>> X.shape, X.format, 10 < X.nnz / X.shape[0] < 30, sorted(set(y.tolist()))
    ((200, 1000), 'csr', True, [0, 1, 2, 3])
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

ZIPF = 1.1


def make_text(rows, cols, nnz, classes, seed=0, sigma=0.3):
    """(X (rows, cols) CSR float64 TF-IDF, y (rows,) int64 labels in [0, classes)): see the module."""
    rng = np.random.default_rng(seed)
    logp = -ZIPF * np.log(np.arange(1, cols + 1))[None, :] + sigma * rng.standard_normal((classes, cols))
    cdf = np.cumsum(np.exp(logp - logp.max(axis=1, keepdims=True)), axis=1)
    cdf /= cdf[:, -1:]
    y = rng.integers(0, classes, rows)
    tokens = np.maximum(rng.poisson(1.6 * nnz, rows), 1)
    indptr = np.concatenate([[0], np.cumsum(tokens)])
    label = np.repeat(y, tokens)
    words = np.empty(indptr[-1], np.int32)
    u = rng.random(indptr[-1])
    for c in range(classes):  # inverse-CDF draws, one class at a time
        mine = label == c
        words[mine] = np.minimum(np.searchsorted(cdf[c], u[mine]), cols - 1)
    del label, u
    X = sp.csr_matrix((np.ones(len(words)), words, indptr), shape=(rows, cols))
    X.sum_duplicates()  # counts
    np.log(X.data, out=X.data)
    X.data += 1
    df = np.bincount(X.indices, minlength=cols)
    X.data *= (np.log((1 + rows) / (1 + df)) + 1)[X.indices]
    norms = np.sqrt(np.add.reduceat(X.data ** 2, X.indptr[:-1]))
    X.data /= np.repeat(norms, np.diff(X.indptr))
    return X, y


def split(X, y, test_rows):
    """(X_train, y_train, X_test, y_test): the last test_rows rows held out (the rows are in random
    order already)."""
    n = X.shape[0] - test_rows
    return X[:n], y[:n], X[n:], y[n:]


def stored_bytes(X) -> int:
    """Bytes of X's stored values and indices (data, indices, indptr)."""
    return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
