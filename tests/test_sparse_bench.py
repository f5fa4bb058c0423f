"""benchmarks/sparse_bench.py and sparse_data.py at a small size: every method of the comparison runs
(the peers included; dask-ml's only where it is installed), and the data are what they claim."""
import dask
import numpy as np
import pytest

from conftest import EMULATOR  # noqa: F401  (the benchmarks' folder on the path, as for the other scripts)


@pytest.fixture
def bench(monkeypatch):
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import sparse_bench
    import sparse_data
    return sparse_bench, sparse_data


def test_text_data_look_like_tfidf_rows(bench):
    _, sd = bench
    X, y = sd.make_text(3000, 2000, 30, 5, seed=1)
    assert X.format == "csr" and X.has_canonical_format and X.dtype == np.float64
    assert np.allclose(np.sqrt(X.multiply(X).sum(axis=1)).A.ravel(), 1.0)  # unit rows
    assert 20 < X.nnz / X.shape[0] < 40 and (X.data > 0).all()
    df = np.bincount(X.indices, minlength=2000)
    assert df[:10].mean() > 20 * df[1000:].mean()  # Zipf: the first words are everywhere, the tail rare
    assert set(np.unique(y)) == set(range(5))
    assert sd.stored_bytes(X) == X.data.nbytes + X.indices.nbytes + X.indptr.nbytes


def test_every_method_runs_at_a_small_size(bench, capsys):
    sb, sd = bench
    X, y = sd.make_text(600, 1500, 15, 3, seed=2)
    data = sd.split(X, y, 150)
    small = {"softmax": dict(max_iter=1, batch_size=100), "svm": dict(max_iter=1, batch_size=100)}
    rows, summary = sb.in_memory(data, 1, ["lbfgs", "sag"], gg_kw=small)
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["LogisticRegression(solver='lbfgs')", "LogisticRegression(solver='sag')"]
    assert {"SoftmaxClassifier", "SVMClassifier", "SGDClassifier(loss='hinge')"} <= set(methods)
    assert all(0 <= r["accuracy"] <= 1 and r["seconds"] > 0 for r in rows)
    assert summary["SVMClassifier"]["peer"] == "SGDClassifier(loss='hinge')"
    mem = sb.memory(data, gg_kw=small)
    assert mem["SVMClassifier"]["peak_bytes"] > 0
    with dask.config.set(scheduler="sync"):
        out = sb.dask_comparison(data, 1, 200, gg_kw=dict(max_iter=1))
    if out is not None:  # dask-ml installed
        assert [r["method"] for r in out[0]][1] == "gpugrad.distributed.fit_linear"
    orders = sb.product_orders(X, C=4, rows=(200, None), repeat=1)
    assert set(orders) == {200, 600} and len(orders[200]) == 7
    sb.report(summary, mem, out[1] if out else None)
    assert "ratio" in capsys.readouterr().out


def test_dask_only_runs_the_dask_comparison_alone(bench, monkeypatch, capsys):
    """``--dask-only``: no in-memory fits, no memory peaks; the Dask comparison (here on the local
    scheduler, the cluster stubbed out) and its summary line."""
    import contextlib
    sb, _ = bench
    monkeypatch.setattr(sb, "dask_client", lambda: contextlib.nullcontext(None))
    with dask.config.set(scheduler="sync"):
        summary, mem, out = sb.main(["--rows", "600", "--cols", "1500", "--nnz", "15", "--classes", "3",
                                     "--rounds", "1", "--chunk", "200", "--dask-only"])
    printed = capsys.readouterr().out
    assert summary == {} and mem is None and "LogisticRegression" not in printed
    if out is not None:  # dask-ml installed
        assert "Dask: gpugrad" in printed and out[1]["accuracy"] > 0.5


def test_step_ab_builds_both_revisions_and_times_them_side_by_side(bench, monkeypatch, capsys):
    """benchmarks/sparse_step_ab.py at a small size: HEAD's kernels/host.c and the working tree's,
    each built as a module of its own, alternate; where the two sources are the same file, so are
    the weights, bit for bit. A revision git does not know is named in the error."""
    import shutil
    import subprocess
    from pathlib import Path

    from gpugrad.backends import host
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=root,
                                                     capture_output=True).returncode:
        pytest.skip("not a git checkout")
    import sparse_step_ab as ab
    before = host._ext
    small = ["--rows", "1500", "--cols", "400", "--nnz", "15", "--classes", "4", "--batch-size", "100", "--rounds", "2"]
    out = ab.main(small)
    assert host._ext is before  # (the loops in use afterwards: the installed ones)
    assert len(out["ratios"]) == 2 and all(r > 0 for r in out["ratios"])
    text = capsys.readouterr().out
    assert "pair 2:" in text and "B/A: median" in text
    unchanged = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "kernels/host.c"], cwd=root).returncode == 0
    if unchanged:
        assert out["same_weights"] and out["max_weight_diff"] == 0
    with pytest.raises(SystemExit, match="no-such-revision"):
        ab.main(small + ["--base", "no-such-revision"])
    real = ab.one_run

    def refused_by_a(ext, *a):  # (a base whose sparse_step takes other arguments)
        if "_a" in ext.__name__:
            raise ValueError("A: expected 4 values, got 260")
        return real(ext, *a)
    monkeypatch.setattr(ab, "one_run", refused_by_a)
    with pytest.raises(SystemExit, match="at HEAD does not take the arguments this tree's Python passes"):
        ab.main(small)
    assert host._ext is before
