"""Train the lecture's linear classifier on scikit-learn's bundled digits (no download).

    python -m gpugrad.examples.digits [--loss softmax|svm] [--epochs 40] [--backend auto]

s = W x + b, softmax + cross-entropy (or the multi-class SVM loss) + lam ||W||^2, mini-batch
gradient descent with the fused gradient ``gpugrad.linear_grad``. Runs on the GPU through CuPy
when one is usable, otherwise on numpy; prints the backend, the loss per epoch and the test
accuracy. The 8x8 images stay uint8-like pixels (0..16); the per-feature mean/std
normalisation is applied inside linear_grad.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gpugrad as gg


def load_digits_split(seed: int, test_fraction: float = 0.25):
    """(X_train, y_train, X_test, y_test) with X as uint8 pixels (n, 64) and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install 'gpugrad[examples]'")
    data = load_digits()
    X = data.data.astype(np.uint8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def predict(X, W, b, mean, std):
    """Class with the largest score s = W x + b for each row of X (normalised like training)."""
    return np.argmax(((X - mean) / std) @ W.T + b, axis=1)


def train(X, y, *, classes: int, loss: str, lam: float, lr: float, epochs: int, batch: int,
          backend, seed: int, log=print):
    """Mini-batch gradient descent on J = mean loss + lam ||W||^2; returns (W, b, history)."""
    xp = backend.xp
    rng = np.random.default_rng(seed)
    n, d = X.shape
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (the digits' corners): leave them unscaled
    W = xp.asarray(rng.standard_normal((classes, d)) * 0.01, dtype=np.float32)
    b = xp.zeros(classes, dtype=np.float32)
    Xd, yd = xp.asarray(X), xp.asarray(y)
    mean_d, std_d = xp.asarray(mean, dtype=np.float32), xp.asarray(std, dtype=np.float32)
    history = []
    for epoch in range(1, epochs + 1):
        order = xp.asarray(rng.permutation(n))
        total = 0.0  # stays on the device: no host synchronisation inside the epoch
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            J, dW, db = gg.linear_grad(Xd[idx], yd[idx], W, b, lam, loss, x_mean=mean_d, x_std=std_d,
                                       validate=(epoch == 1))  # the data is checked once, in epoch 1
            W -= lr * dW
            b -= lr * db
            total = total + J * len(idx)
        history.append(float(total) / n)
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            log(f"epoch {epoch:3d}  J = {history[-1]:.4f}")
    to_np = backend.to_numpy
    return to_np(W), to_np(b), history, mean, std


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", choices=["softmax", "svm"], default="softmax")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    be = gg.get_backend(args.backend)
    print(f"backend: {be.name} ({gg.why_backend()})")
    Xtr, ytr, Xte, yte = load_digits_split(args.seed)
    print(f"digits: {len(ytr)} training and {len(yte)} test images, {Xtr.shape[1]} pixels, 10 classes")
    t0 = time.perf_counter()
    W, b, history, mean, std = train(Xtr, ytr, classes=10, loss=args.loss, lam=args.lam, lr=args.lr,
                                     epochs=args.epochs, batch=args.batch, backend=be, seed=args.seed)
    seconds = time.perf_counter() - t0
    acc = float((predict(Xte, W, b, mean, std) == yte).mean())
    print(f"trained in {seconds:.2f} s; test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
