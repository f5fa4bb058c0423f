"""gpugrad.data: the loaders read what they should and refuse bad files by name.

CIFAR-10 is checked on small synthetic batch files written in its exact "python version" format
(pickled dicts with b'data' uint8 (n, 3072) and b'labels'); the digits against scikit-learn's own
copy; the statistics against numpy.
"""
import os
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from gpugrad.training import data

ROWS = 20  # rows per synthetic CIFAR-10 batch


def write_batch(path, X, labels, protocol=2, **extra):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"synthetic", b"data": X, b"labels": labels, **extra}, f,
                    protocol=protocol)


@pytest.fixture
def cifar(tmp_path):
    """A CIFAR-10 folder of five 20-row data batches and a test batch; row i of batch k starts
    with the value 10*k + i % 10 and has label (k + i) % 10, so any row can be traced back."""
    rows = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], start=1):
        X = np.zeros((ROWS, 3072), dtype=np.uint8)
        X[:, 0] = 10 * k + np.arange(ROWS) % 10
        X[:, 1:] = np.random.default_rng(k).integers(0, 256, size=(ROWS, 3071), dtype=np.uint8)
        labels = [(k + i) % 10 for i in range(ROWS)]
        write_batch(tmp_path / name, X, labels)
        rows[name] = (X, np.array(labels))
    return tmp_path, rows


# ----------------------------------------------------------------------------- CIFAR-10

def test_cifar10_reads_all_batches_with_the_last_rows_as_validation(cifar):
    folder, rows = cifar
    ds = data.load_cifar10(folder, n_val=15)
    X_all = np.concatenate([rows[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_all = np.concatenate([rows[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.X_train, X_all[:-15])
    np.testing.assert_array_equal(ds.X_val, X_all[-15:])
    np.testing.assert_array_equal(ds.y_train, y_all[:-15])
    np.testing.assert_array_equal(ds.y_val, y_all[-15:])
    np.testing.assert_array_equal(ds.X_test, rows["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, rows["test_batch"][1])
    assert ds.X_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (32, 32, 3) and ds.name == "cifar10"
    assert ds.class_names == list(data.CIFAR10_CLASSES) and ds.n_classes == 10


def test_cifar10_selected_batches_in_order_and_no_validation(cifar):
    folder, rows = cifar
    ds = data.load_cifar10(folder, n_val=0, batches=[3, 1])
    np.testing.assert_array_equal(ds.X_train, np.concatenate([rows["data_batch_3"][0], rows["data_batch_1"][0]]))
    assert ds.X_val is None and ds.y_val is None
    assert data.load_cifar10(folder, n_val=5, batches=2).X_train.shape == (ROWS - 5, 3072)


def test_cifar10_class_names_come_from_batches_meta(cifar):
    folder, _ = cifar
    names = [f"class{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    assert data.load_cifar10(folder, n_val=0).class_names == [f"class{i}" for i in range(10)]


def test_cifar10_reads_every_pickle_protocol_numpy_uses(cifar):
    folder, rows = cifar
    for protocol in (2, 4, 5):
        X, y = rows["data_batch_1"]
        write_batch(folder / "data_batch_1", X, y.tolist(), protocol=protocol)
        np.testing.assert_array_equal(data.load_cifar10(folder, n_val=0).X_train[:ROWS], X)


def test_cifar10_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        data.load_cifar10(tmp_path / "nowhere")


def test_cifar10_refuses_a_missing_batch_naming_it(cifar):
    folder, _ = cifar
    os.remove(folder / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="lacks data_batch_4"):
        data.load_cifar10(folder)
    data.load_cifar10(folder, batches=[1, 2], n_val=0)  # not asked for: not needed
    os.remove(folder / "test_batch")
    with pytest.raises(FileNotFoundError, match="lacks test_batch"):
        data.load_cifar10(folder, batches=[1])


def test_cifar10_refuses_a_file_that_is_not_a_pickle(cifar):
    folder, _ = cifar
    (folder / "data_batch_2").write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR-10 batch: it could not be read as a pickle"):
        data.load_cifar10(folder)


def test_cifar10_refuses_a_pickle_that_would_run_code(cifar):
    folder, _ = cifar

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(ValueError, match=r"data_batch_1 .*refers to (posix|nt|os)\.system"):
        data.load_cifar10(folder)


def test_cifar10_refuses_a_pickle_that_is_not_a_dict(cifar):
    folder, _ = cifar
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 batch: it holds a list, not a dict"):
        data.load_cifar10(folder)


@pytest.mark.parametrize("key", [b"data", b"labels"])
def test_cifar10_refuses_a_batch_without_data_or_labels(cifar, key):
    folder, rows = cifar
    X, y = rows["data_batch_5"]
    batch = {b"data": X, b"labels": y.tolist()}
    del batch[key]
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(ValueError, match=f"data_batch_5 is not a CIFAR-10 batch: it has no {key!r}"):
        data.load_cifar10(folder)


@pytest.mark.parametrize("X, what", [
    (np.zeros((ROWS, 3072), dtype=np.float32), "float32 array of shape"),
    (np.zeros((ROWS, 1024), dtype=np.uint8), r"uint8 array of shape \(20, 1024\)"),
    (np.zeros((ROWS, 32, 32, 3), dtype=np.uint8), r"uint8 array of shape \(20, 32, 32, 3\)"),
    ([[0] * 3072] * ROWS, "got a list"),
])
def test_cifar10_refuses_data_that_is_not_uint8_with_3072_columns(cifar, X, what):
    folder, _ = cifar
    write_batch(folder / "test_batch", X, [0] * ROWS)
    with pytest.raises(ValueError, match=rf"test_batch: b'data' must be a uint8 array of shape \(n, 3072\).*{what}"):
        data.load_cifar10(folder)


def test_cifar10_refuses_labels_of_another_length(cifar):
    folder, rows = cifar
    write_batch(folder / "data_batch_1", rows["data_batch_1"][0], [0] * (ROWS - 1))
    with pytest.raises(ValueError, match="data_batch_1: b'labels' has 19 labels but b'data' has 20 rows"):
        data.load_cifar10(folder)


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_cifar10_refuses_labels_outside_0_to_9_naming_the_first(cifar, bad):
    folder, rows = cifar
    labels = [3] * ROWS
    labels[7], labels[12] = bad, 11
    write_batch(folder / "data_batch_2", rows["data_batch_2"][0], labels)
    with pytest.raises(ValueError, match=rf"data_batch_2: label {bad} at position 7 is outside 0\.\.9"):
        data.load_cifar10(folder)


def test_cifar10_refuses_labels_that_are_not_integers(cifar):
    folder, rows = cifar
    write_batch(folder / "data_batch_2", rows["data_batch_2"][0], [0.5] * ROWS)
    with pytest.raises(ValueError, match="data_batch_2: b'labels' must be a list of integers"):
        data.load_cifar10(folder)


def test_cifar10_refuses_bad_options(cifar):
    folder, _ = cifar
    with pytest.raises(ValueError, match="n_val=100 leaves no training rows"):
        data.load_cifar10(folder, n_val=100)
    with pytest.raises(ValueError, match="n_val must be an integer >= 0"):
        data.load_cifar10(folder, n_val=-1)
    for batches in ([0], [6], [1, 1], [], "12"):
        with pytest.raises(ValueError, match="batches must be"):
            data.load_cifar10(folder, batches=batches)


def test_as_images_undoes_the_channel_major_layout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    # CIFAR-10's rows: the R plane, then G, then B, each 32x32 row-major.
    rows = np.concatenate([images[..., c].reshape(4, 1024) for c in range(3)], axis=1)
    np.testing.assert_array_equal(data.as_images(rows, (32, 32, 3)), images)
    np.testing.assert_array_equal(data.as_images(rows[1], "cifar10"), images[1])
    X = np.arange(128).reshape(2, 64)
    np.testing.assert_array_equal(data.as_images(X, "digits"), X.reshape(2, 8, 8))
    with pytest.raises(ValueError, match=r"rows of length 64 do not fit image_shape \(32, 32, 3\)"):
        data.as_images(X, (32, 32, 3))
    with pytest.raises(ValueError, match="image_shape must be"):
        data.as_images(X, (64,))


# ----------------------------------------------------------------------------- digits

def test_digits_are_sklearns_pixels_split_stratified_and_deterministic():
    ref = sklearn_digits()
    ds = data.load_digits(test_fraction=0.25, seed=3)
    assert ds.X_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert len(ds.y_train) + len(ds.y_test) == 1797 and len(ds.y_test) == 450  # ceil(0.25 * 1797)
    assert ds.X_val is None and ds.image_shape == (8, 8) and ds.class_names == [str(c) for c in range(10)]
    # The two parts hold exactly sklearn's examples, each once.
    both = np.concatenate([ds.X_train, ds.X_test]).astype(np.float64)
    labels = np.concatenate([ds.y_train, ds.y_test])
    order = np.lexsort(np.column_stack([both, labels]).T)
    ref_order = np.lexsort(np.column_stack([ref.data, ref.target]).T)
    np.testing.assert_array_equal(both[order], ref.data[ref_order])
    np.testing.assert_array_equal(labels[order], ref.target[ref_order])
    # Each class is held out in its proportion: at most one example off the exact share.
    counts = np.bincount(ref.target)
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.25 * counts) < 1)
    again = data.load_digits(test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.X_test, ds.X_test)
    assert not np.array_equal(data.load_digits(test_fraction=0.25, seed=4).X_test, ds.X_test)
    assert data.load_digits(test_fraction=0).X_test is None


def test_stratified_split_matches_sklearn_sizes_and_keeps_each_class():
    from sklearn.model_selection import train_test_split
    y = np.repeat(np.array([7, -2, 5, 9]), [50, 31, 7, 1])
    for fraction in (0.1, 0.25, 0.3, 0.5):
        keep, held = data.stratified_split(y, fraction, seed=0)
        _, ref_held = train_test_split(y, test_size=fraction, stratify=None, random_state=0)
        assert len(held) == len(ref_held)
        np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(y)))
        assert set(y[keep]) == set(y)  # the single 9 stays for training
        for c, n_c in zip(*np.unique(y, return_counts=True)):
            assert abs(np.sum(y[held] == c) - fraction * n_c) < 1 or n_c == 1
    keep, held = data.stratified_split(y, 0.0, seed=0)
    assert len(held) == 0 and len(keep) == len(y)
    for fraction in (1.0, -0.1, "half"):
        with pytest.raises((ValueError, TypeError), match="fraction must be"):
            data.stratified_split(y, fraction, seed=0)


# ----------------------------------------------------------------------------- npz, arrays

def test_npz_round_trip_maps_arbitrary_labels_to_classes(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = rng.choice(np.array([-40, 3, 1000]), size=60)
    np.savez(tmp_path / "set.npz", X=X, y=y)
    ds = data.load_npz(tmp_path / "set.npz", test_fraction=0.2, seed=1)
    assert ds.class_names == ["-40", "3", "1000"] and ds.name == "set" and ds.image_shape is None
    classes = np.array([-40, 3, 1000])
    got_X = np.concatenate([ds.X_train, ds.X_test])
    got_y = classes[np.concatenate([ds.y_train, ds.y_test])]
    order = np.argsort(got_X[:, 0])
    ref = np.argsort(X[:, 0])
    np.testing.assert_array_equal(got_X[order], X[ref])
    np.testing.assert_array_equal(got_y[order], y[ref])
    assert len(ds.y_test) == 12 and ds.y_train.dtype == np.int64


def test_npz_refusals_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        data.load_npz(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz is not a .npz file"):
        data.load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy is a single .npy array"):
        data.load_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "nokeys.npz", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nokeys.npz lacks the arrays X and y .*holds: data"):
        data.load_npz(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "noy.npz", X=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="noy.npz lacks the array y"):
        data.load_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([{}, {}], dtype=object), y=np.zeros(2, int))
    with pytest.raises(ValueError, match="obj.npz"):
        data.load_npz(tmp_path / "obj.npz")
    cases = {
        "flat": (np.zeros(4), np.zeros(4, int), r"X must be 2-D \(n, d\).*shape \(4,\)"),
        "y2d": (np.zeros((4, 2)), np.zeros((4, 1), int), r"y must be 1-D \(n,\), got shape \(4, 1\)"),
        "short": (np.zeros((4, 2)), np.zeros(3, int), "y has 3 labels but X has 4 rows"),
        "float": (np.zeros((4, 2)), np.array([0.0, 1.0, 0.5, 1.0]), "labels y must be integers, got dtype float64"),
        "nan": (np.array([[0.0, 1.0], [np.nan, 2.0]]), np.array([0, 1]), r"X\[1, 0\] = nan is not finite"),
    }
    for name, (X, y, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", X=X, y=y)
        with pytest.raises((ValueError, TypeError), match=rf"{name}.npz: {message}"):
            data.load_npz(tmp_path / f"{name}.npz")


def test_from_arrays_checks_like_npz_and_keeps_pixel_dtypes():
    X = np.arange(40, dtype=np.uint8).reshape(10, 4)
    ds = data.from_arrays(X, np.array([2, 4] * 5), test_fraction=0, name="toy")
    assert ds.X_train is X and ds.class_names == ["2", "4"] and ds.X_test is None
    assert data.from_arrays(X.astype(np.int32), np.zeros(10, int), test_fraction=0).X_train.dtype == np.float64
    with pytest.raises(TypeError, match="toy: labels y must be integers"):
        data.from_arrays(X, np.array(list("ababababab")), name="toy")
    with pytest.raises(ValueError, match=r"arrays: X must be 2-D"):
        data.from_arrays(X.ravel(), np.zeros(40, int))


# ----------------------------------------------------------------------------- load(spec)

def test_load_dispatches_on_the_spec(cifar, tmp_path):
    folder, _ = cifar
    assert data.load("digits", seed=1).name == "digits"
    assert data.load(str(folder), n_val=10).X_val.shape == (10, 3072)
    np.savez(tmp_path / "set.npz", X=np.eye(4), y=np.array([0, 1, 0, 1]))
    assert data.load(tmp_path / "set.npz", test_fraction=0).X_train.shape == (4, 4)


def test_load_refuses_unknown_specs_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'mnist': expected 'digits', a CIFAR-10 folder"):
        data.load("mnist")
    with pytest.raises(FileNotFoundError, match="gone.npz does not exist"):
        data.load(str(tmp_path / "gone.npz"))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py does not exist"):
        data.load(str(tmp_path / "cifar-10-batches-py"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt.*not a .npz file"):
        data.load(str(tmp_path / "notes.txt"))
    with pytest.raises(TypeError, match="option n_val does not apply to 'digits'"):
        data.load("digits", n_val=3)


# ----------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_normalisation_matches_numpy_mean_and_std_in_chunks(dtype):
    rng = np.random.default_rng(0)
    X = (rng.integers(0, 256, size=(1003, 7)) * (1 if dtype == np.uint8 else 0.37)).astype(dtype)
    X[:, 3] = X[0, 3]  # a constant column
    mean, std = data.normalisation(X, chunk_rows=100)
    ref = X.astype(np.float64)
    assert mean.dtype == np.float64 and std.dtype == np.float64 and mean.shape == (7,)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-12)
    expected = ref.std(axis=0)
    expected[3] = 1.0
    np.testing.assert_allclose(std, expected, rtol=1e-12)
    np.testing.assert_allclose(data.normalisation(X)[1], std, rtol=1e-13)  # in one chunk


def test_normalisation_refuses_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        data.normalisation(np.zeros(3))
    with pytest.raises(ValueError, match="0 rows"):
        data.normalisation(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="column 1 holds NaN or Inf"):
        data.normalisation(np.array([[0.0, np.inf], [1.0, 2.0]]))


def test_digits_are_read_from_scikit_learns_file_as_its_loader_reads_them():
    """The CSV scikit-learn ships, read directly (importing sklearn.datasets costs a command a
    second or more; tests/test_cli.py checks a run does without it), gives exactly the arrays of
    scikit-learn's own loader."""
    X, y = data._digits_arrays()
    bunch = sklearn_digits()
    assert X.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
