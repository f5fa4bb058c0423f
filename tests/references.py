"""In-memory references the Dask tests compare with (tests/test_distributed.py, tests/test_sparse.py)."""
import numpy as np

import gpugrad as gg
from gpugrad.training.data import batch_rows, n_batches
from gpugrad.training.optim import SGD, Linear


def sgd_reference(Xn, y_idx, params, chunks, *, lam, lr, momentum, batch_size, epochs, seed, loss="softmax"):
    """The in-memory dense SGD step (``be.linear_grad`` + ``optim.SGD``) over the rows of each chunk
    in its seeded order, chunk after chunk, epoch after epoch: (params, mean batch cost of each epoch)."""
    be = gg.get_backend("numpy")
    params = {k: np.array(v, np.float64) for k, v in params.items()}
    starts = np.cumsum((0,) + tuple(chunks))
    opt = SGD(Linear(lr, epochs * sum(n_batches(c, batch_size) for c in chunks)), momentum=momentum)
    opt.init(params)
    curve = []
    for epoch in range(epochs):
        cost = rows = 0.0
        for i, c in enumerate(chunks):
            order = np.random.default_rng([seed, epoch, i]).permutation(c) + starts[i]
            for s in range(n_batches(c, batch_size)):
                idx = batch_rows(order, s, batch_size)
                J, dW, db = be.linear_grad(Xn[idx], y_idx[idx], params["W"], params["b"], lam, loss)
                opt.step(params, {"W": dW, "b": db})
                cost, rows = cost + float(J) * len(idx), rows + len(idx)
        curve.append(cost / rows)
    return params, curve
