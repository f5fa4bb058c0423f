"""An independent reference: PyTorch's autograd, where PyTorch is installed (CPU is enough)."""
import numpy as np
import pytest

import deps

import gpugrad as gg

torch = deps.require("torch")
F = torch.nn.functional


def _torch_linear(X, y, W, b, lam, loss):
    tW = torch.tensor(W, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    S = torch.tensor(X) @ tW.T + tb
    if loss == "softmax":
        L = F.cross_entropy(S, torch.tensor(y))
    else:  # multi_margin_loss averages over the C classes too: undo that to get the lecture's sum
        L = F.multi_margin_loss(S, torch.tensor(y), p=1, margin=1.0) * W.shape[0]
    J = L + lam * (tW ** 2).sum()
    J.backward()
    return J.item(), tW.grad.numpy(), tb.grad.numpy()


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_fused_and_graph_gradients_match_pytorch_autograd(rng, loss):
    n, d, C, lam = 37, 11, 6, 0.05
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    W, b = rng.standard_normal((C, d)) * 0.3, rng.standard_normal(C) * 0.1
    J_t, dW_t, db_t = _torch_linear(X, y, W, b, lam, loss)

    J, dW, db = gg.linear_grad(X, y, W, b, lam, loss)
    np.testing.assert_allclose(float(J), J_t, rtol=1e-12)
    np.testing.assert_allclose(dW, dW_t, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(db, db_t, rtol=1e-10, atol=1e-14)

    Wt, bt = gg.tensor(W, requires_grad=True), gg.tensor(b, requires_grad=True)
    S = gg.tensor(X) @ Wt.T + bt
    Jg = (gg.cross_entropy(S, y) if loss == "softmax" else gg.svm_loss(S, y)) + lam * (Wt ** 2).sum()
    Jg.backward()
    np.testing.assert_allclose(float(Jg.value), J_t, rtol=1e-12)
    np.testing.assert_allclose(Wt.grad, dW_t, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(bt.grad, db_t, rtol=1e-10, atol=1e-14)


def test_elementwise_ops_match_pytorch(rng):
    a, c = rng.uniform(0.5, 2.0, (4, 5)), rng.standard_normal((5,))
    ta, tc = torch.tensor(a, requires_grad=True), torch.tensor(c, requires_grad=True)
    (torch.log(ta) * torch.exp(tc) / (ta ** 2 + 1) - torch.relu(tc)).mean().backward()
    ga, gc = gg.tensor(a, requires_grad=True), gg.tensor(c, requires_grad=True)
    (gg.log(ga) * gg.exp(gc) / (ga ** 2 + 1) - gg.relu(gc)).mean().backward()
    np.testing.assert_allclose(ga.grad, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gc.grad, tc.grad.numpy(), rtol=1e-12)
