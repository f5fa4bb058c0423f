"""Every kernel entry point in kernels/, launched on the CPU emulator (tests/emu) by this file.

Each case makes one call through the CuPy backend's public methods (softmax_cross_entropy_grad,
svm_grad, linear_grad, linear_step, first_invalid; the compiled step's gather_rows, layer_forward,
layer_backward, scores_loss, optimizer_update) at the smallest shape for which the backend's own planning
picks the kernel under test, so the grid, block, shared memory and arguments are the ones a GPU
would get; the result is checked against the float64 numpy backend. The cases run under the
emulator's "runahead" schedule (one warp or block at a time runs ahead of the others until it
waits), so every kernel is also seen correct when warps drift apart between barriers.

The last test fails when an entry point of the kernel module is launched by none of the cases.
It needs no other test of this file to have run first (a parallel run, pytest -n, spreads them
over processes): the cases that did not run in its process are run there.
"""
import zlib

import numpy as np
import pytest

import deps
import gpugrad as gg

deps.need_emulator()  # Linux, g++ and cupy (no GPU); in CI their absence fails

from emu import emulator as E  # noqa: E402
from kernel_checks import (check_gather, check_layer, check_linear_step, check_scores_loss, check_update,  # noqa: E402
                           GATHER_KINDS, linear_case, LINEAR_KINDS, rel, row_kernel_shapes, TOL)
from kernel_checks import check_sparse_step, sparse_case  # noqa: E402

NP = gg.get_backend("numpy")
dev = E.emucupy.asarray


def _row_case(loss, dtype, C, variant):
    """A row-loss call on (n, C) scores that must launch the kernel the planning picks for C."""
    def run(be, monkeypatch, rng):
        if variant is not None:
            be = be._with_variants(ce_long_rows=variant)
        # 7 rows: past the small card's 6 SMs for the persistent kernels (a block takes a second
        # row), a partial block for the lane teams. Scores on a 1/64 grid: hinge margins are
        # exact in float32 too, so no margin within rounding of 0 flips between kernel and reference.
        n = 7 if C <= 10_000 else 2
        S = np.round(rng.standard_normal((n, C)) * 3 * 64) / 64
        y = rng.integers(0, C, n)
        fn, ref_fn = ((be.softmax_cross_entropy_grad, NP.softmax_cross_entropy_grad) if loss == "softmax"
                      else (be.svm_grad, NP.svm_grad))
        ref_loss, ref_dS = ref_fn(S, y)
        got_loss, got_dS = fn(dev(S.astype(dtype)), dev(y))
        assert rel(got_dS, ref_dS) <= TOL[dtype]
        assert abs(float(got_loss) - ref_loss) <= TOL[dtype] * abs(ref_loss)
    return run


def _linear_case(kind, C, variant):
    """A fused linear step with X of `kind` and C classes on the "simt" or "mma" kernel."""
    def run(be, monkeypatch, rng):
        be = be._with_variants(linear_f32=variant, linear_u8=variant)
        # Two row groups of X a block and one block more than the small card has SMs would need
        # many rows; a few rows and a short d keep the emulator fast and still cover a partial
        # row group and a d that is no multiple of the columns a thread takes.
        n, d = (70, 40) if variant == "mma" else (9, 13)
        ref, args = linear_case(rng, kind, n, d, C, wscale=0.05 if kind != "u8" else 0.01)
        args = tuple(None if a is None else dev(a) for a in args)
        loss = "softmax" if C % 2 else "svm"
        got = be.linear_grad(*args[:4], 0.01, loss, *args[4:])
        check_linear_step(ref, got, loss, 0.01)
    return run


def _sparse_case(dtype, C):
    """The sparse step on a CSR X (empty row and column, duplicates, unsorted indices, int64 indices
    for float64, a row past what a warp keeps in registers) with C classes, scaled by x_std."""
    def run(be, monkeypatch, rng):
        from emu import emu_sparse
        X, y, W, b, std = sparse_case(rng, 11, 160, C, dtype, idx64=dtype == np.float64, long_row=140)
        Xd = emu_sparse.csr_matrix((dev(X.data.astype(dtype)), dev(X.indices), dev(X.indptr)), shape=X.shape)
        loss = "softmax" if C % 2 else "svm"
        got = be.linear_grad(Xd, dev(y), dev(W.astype(dtype)), dev(b.astype(dtype)), 0.01, loss, None,
                             dev(std.astype(dtype)))
        check_sparse_step(X, y, W, b, got, loss, 0.01, x_std=std)
    return run


def _first_invalid_case(be, monkeypatch, rng):
    """The device-side check: the first bad label and the first NaN/Inf of each array."""
    n, C = 600, 7
    y = rng.integers(0, C, n)
    y[[450, 500]] = [C, -1]
    S = rng.standard_normal((n, C))
    S[300, 2], S[100, 6] = np.inf, np.nan
    label_pos, bad = be.first_invalid(dev(y), C, [dev(S), dev(S.astype(np.float32)), dev(np.ones(5))])
    assert label_pos == 450 and bad == [100 * C + 6, 100 * C + 6, -1]


def _linear_rows_case(be, monkeypatch, rng):
    """The fused step on rows idx of a larger X (the trainer's batch, read where it lies)."""
    ref, args = linear_case(rng, "f32", 40, 13, 10)
    idx = rng.permutation(40)[:9]
    X, y = args[0], args[1]
    out = (dev(np.full((), np.nan, np.float32)), dev(np.full((10, 13), np.nan, np.float32)),
           dev(np.full(10, np.nan, np.float32)))
    got = be.linear_step(dev(X), dev(idx), dev(y), dev(args[2]), dev(args[3]), "softmax", out=out)
    check_linear_step((ref[0][idx], ref[1][idx], *ref[2:]), got, "softmax", 0.0)


def _mlp_cases():
    """The compiled step's kernels (kernels/mlp.cuh): each at the smallest shape that selects it."""
    cases = {}
    for kind in GATHER_KINDS:
        cases[f"gg_gather_{kind}"] = ({f"gg_gather_{kind}"},
                                      lambda be, mp, rng, kind=kind: check_gather(be, dev, rng, kind))
    for t, dtype in (("f32", np.float32), ("f64", np.float64)):
        cases[f"gg_layer_fwd_{t}"] = ({f"gg_layer_fwd_{t}", f"gg_layer_bwd_{t}"},
                                      lambda be, mp, rng, dtype=dtype: (check_layer(be, dev, rng, dtype, True),
                                                                        check_layer(be, dev, rng, dtype, False)))
        cases[f"gg_layer_bwd_{t}"] = cases[f"gg_layer_fwd_{t}"]
        for K, C in ((1, 10), (2, 33), (4, 100), (8, 200), (32, 700)):
            cases[f"gg_scores_loss_{t}_k{K}"] = (
                {f"gg_scores_loss_{t}_k{K}"},
                lambda be, mp, rng, dtype=dtype, C=C, K=K: check_scores_loss(be, dev, rng, dtype, C,
                                                                             "softmax" if K % 2 else "svm", K < 8))
        cases[f"gg_update_{t}"] = ({f"gg_update_{t}"}, lambda be, mp, rng, dtype=dtype: [
            check_update(be, dev, rng, dtype, rule) for rule in ("sgd", "momentum", "nesterov", "adam")])
    return cases


def _cases():
    """{case id: (kernels it must launch, run(be, monkeypatch, rng))}."""
    cases = {}
    for loss in ("softmax", "svm"):
        for dtype in (np.float32, np.float64):
            for name, (C, variant) in row_kernel_shapes(loss, dtype).items():
                cases[name] = ({name}, _row_case(loss, dtype, C, variant))
    for kind, (dtype, _) in LINEAR_KINDS.items():
        finish = "gg_linear_finish" if dtype == np.float32 else "gg_linear_finish_f64"
        for C in range(1, 17):
            cases[f"gg_linear_{kind}_c{C}"] = ({f"gg_linear_{kind}_c{C}", finish}, _linear_case(kind, C, "simt"))
    for x, prep in (("f32", "gg_linmma_prep_f32"), ("u8", "gg_linmma_prep")):
        for nt, C in ((1, 5), (2, 12)):
            cases[f"gg_linmma_{x}_nt{nt}"] = ({f"gg_linmma_{x}_nt{nt}", prep, "gg_linmma_finish"},
                                              _linear_case(x, C, "mma"))
    for dtype, t in ((np.float32, "f32"), (np.float64, "f64")):
        for cp, C in ((1, 1), (2, 2), (4, 3), (8, 5), (16, 12), (32, 20)):
            cases[f"gg_sparse_{t}_t{cp}"] = ({f"gg_sparse_{t}_t{cp}", f"gg_sparse_prep_{t}", f"gg_sparse_finish_{t}"},
                                             _sparse_case(dtype, C))
    cases["gg_first_invalid"] = ({"gg_first_invalid"}, _first_invalid_case)
    cases["gg_linear_f32_c10 rows"] = ({"gg_linear_f32_c10", "gg_linear_finish"}, _linear_rows_case)
    cases.update(_mlp_cases())
    return cases


CASES = _cases()
LAUNCHED = set()  # every kernel a case of this file has launched in this process
RAN = set()       # the cases that ran in this process


def _run_case(case, monkeypatch, rng):
    """Run one case on a fresh emulated backend under the runahead schedule (seeded by the case's
    name), check that it launched the kernels it is meant to, record what it launched."""
    expected, run = CASES[case]
    E.use(None)
    E.configure("runahead", zlib.crc32(case.encode()), True)
    try:
        be = E.emulated_backend(monkeypatch)
        run(be, monkeypatch, rng)
    finally:
        E.configure("forward", 1, True)  # the other tests' default
    LAUNCHED.update(be.launches)
    RAN.add(case)
    assert expected <= set(be.launches), f"{case}: launched {be.launches}, expected {sorted(expected)}"


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_numpy_at_a_shape_that_selects_it(case, monkeypatch, rng):
    _run_case(case, monkeypatch, rng)


def test_every_entry_point_is_launched(rng):
    """Every extern "C" kernel of the module (the emulator's table, built from the same source the
    GPU loader compiles) is launched by a case of this file."""
    for case in CASES:
        if case not in RAN:
            with pytest.MonkeyPatch.context() as monkeypatch:
                _run_case(case, monkeypatch, rng)
    never = sorted(set(E.kernels()) - LAUNCHED)
    assert not never, (f"{len(never)} kernel entry points are launched by no test: {never}; add a case to "
                       "tests/test_kernel_coverage.py or delete the kernel")
