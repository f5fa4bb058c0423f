"""Optimisers and schedules against their formulas written out by hand; state round trips."""
import math

import numpy as np
import pytest

from gpugrad.training import optim


def run(opt, grads, p0):
    params = {"W": p0.copy()}
    opt.init(params)
    for g in grads:
        opt.step(params, {"W": g})
    return params["W"]


@pytest.fixture
def grads(rng):
    return [rng.standard_normal((3, 2)) for _ in range(5)]


def test_sgd_is_plain_gradient_descent(grads):
    p = np.ones((3, 2))
    want = p - 0.1 * sum(grads)
    np.testing.assert_allclose(run(optim.SGD(0.1), grads, p), want, rtol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_follows_its_recursion(grads, nesterov):
    p, v, mu, lr = np.ones((3, 2)), np.zeros((3, 2)), 0.9, 0.05
    for g in grads:
        v = mu * v - lr * g
        p = p + (mu * v - lr * g if nesterov else v)
    got = run(optim.SGD(lr, momentum=mu, nesterov=nesterov), grads, np.ones((3, 2)))
    np.testing.assert_allclose(got, p, rtol=1e-13)


def test_adam_follows_kingma_and_ba(grads):
    p, m, v = np.ones((3, 2)), 0.0, 0.0
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(run(optim.Adam(lr), grads, np.ones((3, 2))), p, rtol=1e-12)


def test_updates_are_in_place(grads):
    params = {"W": np.ones((3, 2))}
    target = params["W"]
    opt = optim.Adam(0.1)
    opt.init(params)
    opt.step(params, {"W": grads[0]})
    assert params["W"] is target


def test_schedules():
    assert [optim.Constant(0.3)(t) for t in (0, 100)] == [0.3, 0.3]
    assert [optim.StepDecay(1.0, 3, 0.1)(t) for t in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    s = optim.Cyclical(1e-5, 1e-1, 500)  # the course's second assignment
    assert s(0) == 1e-5 and s(500) == pytest.approx(1e-1) and s(1000) == pytest.approx(1e-5)
    assert s(250) == pytest.approx((1e-5 + 1e-1) / 2) and s(1750) == pytest.approx((1e-5 + 1e-1) / 2)
    assert [optim.Linear(2.0, 4)(t) for t in (0, 1, 3, 4, 9)] == pytest.approx([2, 1.5, 0.5, 0, 0])
    for sched in (optim.Constant(0.3), optim.StepDecay(1.0, 3), s, optim.Linear(2.0, 4)):
        assert optim.make_schedule(sched.config()).config() == sched.config()


def test_epoch_schedules_follow_their_formulas_in_steps():
    """The estimators' learning_rate names, counted in steps of 5 per epoch over 9 epochs: checked
    against each formula written out; a schedule object passes through; an unknown name is named."""
    steps = 5
    const = optim.epoch_schedule("constant", 0.1, steps, epochs=9)
    assert [const(t) for t in (0, 44)] == [0.1, 0.1]
    inv = optim.epoch_schedule("invscaling", 0.1, steps, epochs=9, power_t=0.5)
    assert inv(10) == pytest.approx(0.1 / math.sqrt(3))  # two epochs in: 0.1 / (1 + 2) ** 0.5
    step = optim.epoch_schedule("step", 0.1, steps, epochs=9)  # / 10 after each 3 epochs (15 steps)
    assert [step(t) for t in (14, 15, 30)] == pytest.approx([0.1, 0.01, 0.001])
    cyc = optim.epoch_schedule("cyclical", 0.1, steps, epochs=9)  # 0.001 -> 0.1 over 2 epochs, back
    assert [cyc(t) for t in (0, 10, 20)] == pytest.approx([0.001, 0.1, 0.001])
    given = optim.Constant(0.3)
    assert optim.epoch_schedule(given, 0.1, steps, epochs=9) is given
    lin = optim.epoch_schedule("linear", 0.1, steps, epochs=9)  # 0.1 (1 - t / (9 steps)), then 0
    assert [lin(t) for t in (0, 9, 9 * steps, 9 * steps + 5)] == pytest.approx([0.1, 0.1 * (1 - 9 / 45), 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        optim.epoch_schedule("cosine", 0.1, steps, epochs=9)


def test_schedule_drives_the_optimiser(grads):
    opt = optim.SGD(optim.StepDecay(1.0, 2, 0.5))
    params = {"W": np.zeros((3, 2))}
    opt.init(params)
    assert [opt.step(params, {"W": g}) for g in grads] == [1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_state_round_trip_continues_exactly(grads, name):
    a = optim.make_optimizer(name, lr=0.05)
    pa = {"W": np.ones((3, 2))}
    a.init(pa)
    for g in grads[:2]:
        a.step(pa, {"W": g})
    b = optim.make_optimizer(a.config())
    pb = {"W": pa["W"].copy()}
    b.load_state(a.state(), pb)
    for g in grads[2:]:
        a.step(pa, {"W": g})
        b.step(pb, {"W": g})
    np.testing.assert_array_equal(pa["W"], pb["W"])
    assert b.t == a.t == 5


def test_state_without_copies_hands_out_the_slots():
    opt = optim.SGD(0.1, momentum=0.9)
    params = {"W": np.ones((3, 2))}
    opt.init(params)
    opt.step(params, {"W": np.ones((3, 2))})
    kept, copied = opt.state(copy=False), opt.state()
    assert kept["velocity/W"] is opt.slots["velocity/W"]
    assert not np.shares_memory(copied["velocity/W"], opt.slots["velocity/W"])
    np.testing.assert_array_equal(kept["velocity/W"], copied["velocity/W"])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        optim.make_optimizer("rmsprop")
    with pytest.raises(ValueError, match="n_s"):
        optim.Cyclical(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="eta_max"):
        optim.Cyclical(1.0, 0.5, 10)


def test_lbfgs_reaches_the_minimum_of_a_quadratic():
    A = np.diag([1.0, 10.0, 100.0])
    target = np.array([1.0, -2.0, 3.0])

    def value_and_grad(p):
        r = p["x"] - target
        return 0.5 * r @ A @ r, {"x": A @ r}

    p, n_iter, losses = optim.lbfgs(value_and_grad, {"x": np.zeros(3)}, tol=1e-10)
    np.testing.assert_allclose(p["x"], target, rtol=1e-7)
    assert 0 < n_iter == len(losses) and losses[-1] < 1e-12 and not math.isnan(losses[0])
