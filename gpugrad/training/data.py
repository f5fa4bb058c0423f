"""Data sets for the trainer: scikit-learn's digits, CIFAR-10's python batches, .npz files, arrays.

Every loader returns a `Dataset`: training, validation and test arrays (validation and test may be
None), the data set's name, the shape of one example as an image and the class names. Rows of X
are examples, as the models take them: ``X (n, d)`` and integer labels ``y (n,)`` in ``0..C-1``.
Pixels stay ``uint8`` (digits 0..16, CIFAR-10 0..255): the models normalise them on the fly with
the per-feature mean and std from `normalisation`, so a float copy of the data never exists.

- `load_digits`: the 8x8 digits bundled with scikit-learn (no download), split by `stratified_split`.
- `load_cifar10`: the CIFAR-10 "python version" batches in a folder; the last ``n_val`` training
  rows are the validation set, ``test_batch`` the test set (the DD2424 assignments' protocol).
- `load_npz`, `from_arrays`: arrays ``X`` and ``y``; any integer labels, mapped to ``0..C-1``.
- `load`: one string picks one of the above (what the command line takes).
- `as_images`: rows back to images, the one place that knows CIFAR-10's channel-major layout.

    >>> ds = load_digits(test_fraction=0.25, seed=0)
    >>> ds.X_train.shape, ds.X_test.shape, ds.X_train.dtype, ds.image_shape
    ((1347, 64), (450, 64), dtype('uint8'), (8, 8))
"""
from __future__ import annotations

import inspect
import os
import pickle
from dataclasses import dataclass

import numpy as np

from .. import checks
from ..backends import is_cupy_array

__all__ = ["Dataset", "load_digits", "load_cifar10", "load_npz", "from_arrays", "load",
           "normalisation", "stratified_split", "batch_rows", "n_batches", "as_images", "check_features",
           "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_SHAPE = (32, 32, 3)
_CIFAR10_D = 32 * 32 * 3


@dataclass(repr=False)
class Dataset:
    """Training / validation / test arrays of one data set.

    X_*: (n, d) arrays (uint8 pixels or floats), y_*: (n,) int64 labels in ``0..C-1``; X_val/y_val
    and X_test/y_test are None when the set has no such part. image_shape: the shape of one row as
    an image ((8, 8) for digits, (32, 32, 3) for CIFAR-10, see `as_images`), or None.
    class_names: the name of class c at index c, or None.

        >>> import numpy as np
        >>> Dataset(np.zeros((4, 2)), np.array([0, 1, 0, 1]), name="toy")
        Dataset('toy': train (4, 2) float64, 2 classes)
    """
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    name: str = "data"
    image_shape: tuple | None = None
    class_names: list[str] | None = None

    def __post_init__(self):
        for part in ("train", "val", "test"):
            X, y = getattr(self, "X_" + part), getattr(self, "y_" + part)
            if (X is None) != (y is None):
                raise ValueError(f"Dataset {self.name!r}: X_{part} and y_{part} must both be given or both be None")
            if X is not None and len(X) != len(y):
                raise ValueError(f"Dataset {self.name!r}: X_{part} has {len(X)} rows but y_{part} has {len(y)} labels")

    @property
    def n_features(self) -> int:
        """d, the number of columns of X."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """C: the number of class names, or one more than the largest label of any part."""
        if self.class_names is not None:
            return len(self.class_names)
        return 1 + max(int(y.max()) for y in (self.y_train, self.y_val, self.y_test)
                       if y is not None and len(y))

    def __repr__(self):
        parts = [f"{part} {tuple(X.shape)}" for part, X in
                 (("train", self.X_train), ("val", self.X_val), ("test", self.X_test)) if X is not None]
        return (f"Dataset({self.name!r}: {', '.join(parts)} {self.X_train.dtype}, "
                f"{self.n_classes} classes)")


# ----------------------------------------------------------------------------- splitting

def n_batches(n: int, batch_size: int) -> int:
    """How many mini-batches an epoch of n rows takes: ceil(n / batch_size), the last one smaller."""
    return -(-n // batch_size)


def batch_rows(order, i: int, batch_size: int):
    """The rows of mini-batch i of an epoch whose row order is ``order`` (a permutation, numpy or
    CuPy): order[i * batch_size:(i + 1) * batch_size], a view (no copy, no launch). The one
    definition of a batch for the trainer, the sparse SGD steps and the Dask workers' steps.

        >>> batch_rows(np.arange(10), 2, 4).tolist()
        [8, 9]
    """
    return order[i * batch_size:(i + 1) * batch_size]


def stratified_split(y, fraction, seed=0):
    """Indices of a stratified split: each class keeps its share in both parts.

    y: (n,) labels (any values). Returns (keep_idx, held_idx), sorted int64 index arrays that
    together cover ``0..n-1`` once; ``len(held_idx) = ceil(fraction * n)``, shared out over the
    classes in proportion to their counts (largest remainders first), except that every class
    keeps at least one example in ``keep_idx``. Which examples of a class are held out is drawn
    by ``numpy.random.default_rng(seed)``: the same seed gives the same split.

        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
        >>> keep, held = stratified_split(y, 0.25, seed=0)
        >>> len(keep), len(held), np.bincount(y[held]).tolist()
        (9, 3, [1, 2])
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels y must be 1-D (n,), got shape {y.shape}")
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise TypeError(f"fraction must be a number in [0, 1), got {fraction!r}") from None
    checks.number("fraction", fraction, low=0, high=1, high_open=True, what="in [0, 1)")
    n = len(y)
    if fraction == 0.0 or n == 0:
        return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)  # numpy 2.0.x returned y's shape; 1-D either way here
    exact = fraction * counts
    held_counts = np.floor(exact).astype(np.int64)
    # Largest-remainder apportionment of ceil(fraction * n) held-out rows, the size scikit-learn's
    # train_test_split takes (rounded first so 0.1 * 30 is 3, not 4); ties go to the class
    # listed first, so the counts are deterministic.
    target = min(int(np.ceil(round(fraction * n, 6))), n - len(classes))
    # Every class keeps one example in keep_idx, so no class is unknown to the model trained on it.
    held_counts = np.minimum(held_counts, counts - 1)
    order = np.argsort(-(exact - held_counts), kind="stable")
    while held_counts.sum() < target:  # at most a pass or two: the floors miss < len(classes)
        for c in order:
            if held_counts.sum() < target and held_counts[c] < counts[c] - 1:
                held_counts[c] += 1
    rng = np.random.default_rng(seed)
    held = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        held.append(rng.permutation(members)[:held_counts[c]])
    held_idx = np.sort(np.concatenate(held)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx


def _split(X, y, test_fraction, seed, **fields):
    """A Dataset with a stratified test part of ``test_fraction`` (none when it is 0)."""
    keep, held = stratified_split(y, test_fraction, seed)
    if len(held) == 0:
        return Dataset(X, y, **fields)
    return Dataset(X[keep], y[keep], X_test=X[held], y_test=y[held], **fields)


# ----------------------------------------------------------------------------- digits

def load_digits(*, test_fraction=0.25, seed=0):
    """scikit-learn's 1797 8x8 handwritten digits (bundled with it, no download).

    X: uint8 (n, 64), pixel values 0..16, row-major 8x8 images; y: int64 0..9. The test part is a
    stratified ``test_fraction`` of the examples drawn with ``seed`` (`stratified_split`);
    test_fraction=0 gives no test part. No validation part: the trainer holds one out when asked.

        >>> ds = load_digits(test_fraction=0.2, seed=1)
        >>> len(ds.y_train), len(ds.y_test), ds.class_names[:3]
        (1437, 360, ['0', '1', '2'])
    """
    X, y = _digits_arrays()
    return _split(X, y, test_fraction, seed, name="digits", image_shape=(8, 8),
                  class_names=[str(c) for c in range(10)])


def _digits_arrays():
    """(X uint8 (1797, 64), y int64 (1797,)): scikit-learn's digits, read from the CSV file it
    ships (rows of 64 pixels and the label) without importing ``sklearn.datasets``, which brings
    in scipy and pandas (a second or more of a command's start); through scikit-learn's own
    loader where that file is not where scikit-learn 1.x keeps it."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            import gzip
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.int64)
            if table.shape == (1797, 65) and table.min() >= 0 and table[:, :-1].max() <= 16:
                return table[:, :-1].astype(np.uint8), table[:, -1]
    from sklearn.datasets import load_digits as sklearn_digits
    bunch = sklearn_digits()
    # float64 values 0..16: exact in uint8, 8 times smaller
    return bunch.data.astype(np.uint8), bunch.target.astype(np.int64)


# ----------------------------------------------------------------------------- CIFAR-10

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays, nothing else.

    A pickle can run any code while it loads; CIFAR-10's batches need only numpy's array
    reconstruction (and ``_codecs.encode``, which Python 3 uses for bytes in protocol 2), so a
    file asking for anything else is refused instead of being trusted.
    """
    _ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}; only numpy arrays, "
                                         "dicts, lists, bytes and numbers are read")
        return super().find_class(module, name)


def _read_pickle(path):
    """The object in a pickle file, read as CIFAR-10's python batches are (encoding="bytes")."""
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="bytes").load()
        except Exception as e:  # a corrupt pickle raises about anything: say which file it was
            raise ValueError(f"{path} is not a CIFAR-10 batch: it could not be read as a pickle "
                             f"({type(e).__name__}: {e})") from None


def _read_cifar_batch(path):
    """(X uint8 (n, 3072), y int64 (n,)) from one CIFAR-10 batch file, checked."""
    batch = _read_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict")
    missing = [k for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise ValueError(f"{path} is not a CIFAR-10 batch: it has no {' or '.join(map(repr, missing))} "
                         f"entry (keys: {sorted(map(repr, batch))})")
    X = batch[b"data"]
    if not isinstance(X, np.ndarray) or X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != _CIFAR10_D:
        what = (f"{X.dtype} array of shape {X.shape}" if isinstance(X, np.ndarray)
                else type(X).__name__)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (n, {_CIFAR10_D}) "
                         f"(32x32 RGB images), got a {what}")
    try:
        y = np.asarray(batch[b"labels"])
    except Exception as e:
        raise ValueError(f"{path}: b'labels' is not a list of integers ({e})") from None
    if y.ndim != 1 or (len(y) and y.dtype.kind not in "iu"):
        raise ValueError(f"{path}: b'labels' must be a list of integers, got "
                         f"{y.dtype} values of shape {y.shape}")
    if len(y) != len(X):
        raise ValueError(f"{path}: b'labels' has {len(y)} labels but b'data' has {len(X)} rows")
    bad = np.flatnonzero((y < 0) | (y > 9))
    if len(bad):
        raise ValueError(f"{path}: label {int(y[bad[0]])} at position {int(bad[0])} is outside 0..9 "
                         "(CIFAR-10 has 10 classes)")
    return X, y.astype(np.int64)


def _cifar_class_names(folder):
    """Class names from ``batches.meta`` when the folder has it, CIFAR-10's names otherwise."""
    path = os.path.join(folder, "batches.meta")
    if not os.path.exists(path):
        return list(CIFAR10_CLASSES)
    meta = _read_pickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if (not isinstance(names, (list, tuple)) or len(names) != 10
            or not all(isinstance(s, (bytes, str)) for s in names)):
        raise ValueError(f"{path}: expected a dict whose b'label_names' is a list of 10 names")
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else s for s in names]


def load_cifar10(folder, *, n_val=5000, batches=None):
    """CIFAR-10 from the "python version" batch files in ``folder`` (nothing is downloaded).

    The folder holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict
    with ``b'data'``: uint8 (10000, 3072) and ``b'labels'``: 10000 integers 0..9, and optionally
    ``batches.meta`` (``b'label_names'``). Training rows are the data batches listed in
    ``batches`` (numbers 1..5; default all five) in that order; the validation set is their last
    ``n_val`` rows (n_val=0: none); the test set is ``test_batch``.

    X: uint8 (n, 3072), each row channel-major: the 1024 red pixels of the 32x32 image row by
    row, then the green plane, then the blue plane. image_shape is (32, 32, 3); `as_images`
    turns rows into (n, 32, 32, 3) images, i.e. ``X.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)``.
    The files are read as pickles that may hold only numpy arrays, dicts, lists and bytes.

        >>> ds = load_cifar10("cifar-10-batches-py", n_val=1000)   # doctest: +SKIP
        >>> ds.X_train.shape, ds.X_val.shape, ds.X_test.shape        # doctest: +SKIP
        ((49000, 3072), (1000, 3072), (10000, 3072))
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise FileNotFoundError(f"CIFAR-10 folder {folder} {what}: expected a folder holding "
                                "data_batch_1 .. data_batch_5 and test_batch (the python version)")
    numbers = _batch_numbers(batches)
    names = [f"data_batch_{i}" for i in numbers] + ["test_batch"]
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}")
    parts = [_read_cifar_batch(os.path.join(folder, name)) for name in names]
    X_test, y_test = parts.pop()
    X = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    n_val = _check_count("n_val", n_val)
    if n_val >= len(X):
        raise ValueError(f"n_val={n_val} leaves no training rows: the batches {list(numbers)} hold {len(X)} rows")
    fields = dict(X_test=X_test, y_test=y_test, name="cifar10", image_shape=CIFAR10_SHAPE,
                  class_names=_cifar_class_names(folder))
    if n_val == 0:
        return Dataset(X, y, **fields)
    cut = len(X) - n_val
    return Dataset(X[:cut], y[:cut], X[cut:], y[cut:], **fields)


def _batch_numbers(batches):
    """The data batch numbers to read: 1..5 by default, else a list of distinct numbers in 1..5."""
    if batches is None:
        return (1, 2, 3, 4, 5)
    if isinstance(batches, (int, np.integer)):
        batches = [batches]
    try:
        numbers = [int(b) for b in batches]
        if any(int(b) != b for b in batches):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"batches must be data batch numbers 1..5, got {batches!r}") from None
    if not numbers or any(not 1 <= b <= 5 for b in numbers) or len(set(numbers)) != len(numbers):
        raise ValueError(f"batches must be distinct data batch numbers 1..5, got {batches!r}")
    return tuple(numbers)


def _check_count(name, value):
    return checks.number(name, value, integer=True, low=0)


# ----------------------------------------------------------------------------- arrays, .npz

def _check_arrays(X, y, source):
    """X (n, d) of real numbers and y (n,) integers, checked; returns (X, y 0..C-1, class names).

    uint8, float32 and float64 X are kept as they are (no copy); other real dtypes become float64.
    Labels may be any integers: the sorted distinct values become classes 0..C-1, their
    original values the class names.
    """
    X = check_features(X, source)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-D (n,), got shape {y.shape}")
    if len(y) != len(X):
        raise ValueError(f"{source}: y has {len(y)} labels but X has {len(X)} rows")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{source}: labels y must be integers, got dtype {y.dtype} "
                        "(cast class labels to an integer type)")
    classes, labels = np.unique(y, return_inverse=True)
    return X, labels.reshape(-1).astype(np.int64), [str(c) for c in classes.tolist()]


def check_features(X, source):
    """X (n, d) of finite real numbers, checked, errors naming ``source``; uint8, float32 and
    float64 kept as they are (no copy), other real dtypes as float64.

        >>> check_features(np.ones((2, 0)), "toy.npz")
        Traceback (most recent call last):
        ...
        ValueError: toy.npz: X is empty (shape (2, 0))
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{source}: X must be 2-D (n, d) with one example per row, got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{source}: X is empty (shape {X.shape})")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{source}: X must hold real numbers, got dtype {X.dtype}")
    if X.dtype not in (np.uint8, np.float32, np.float64):
        X = X.astype(np.float64)
    if X.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(X))
        if len(bad):
            i, j = map(int, bad[0])
            raise ValueError(f"{source}: X[{i}, {j}] = {X[i, j]} is not finite")
    return X


def from_arrays(X, y, *, test_fraction=0.25, seed=0, name="arrays"):
    """A Dataset from in-memory arrays X (n, d) and integer labels y (n,).

    The labels' distinct values, sorted, become classes 0..C-1 (class_names keeps the original
    values as strings); the test part is a stratified ``test_fraction`` drawn with ``seed``.

        >>> X = np.arange(16.0).reshape(8, 2)
        >>> ds = from_arrays(X, np.array([5, 5, 5, 5, -1, -1, -1, -1]), test_fraction=0.25)
        >>> ds.y_train.tolist(), ds.class_names
        ([1, 1, 1, 0, 0, 0], ['-1', '5'])
    """
    X, y, class_names = _check_arrays(X, y, name)
    return _split(X, y, test_fraction, seed, name=name, class_names=class_names)


def load_npz(path, *, test_fraction=0.25, seed=0):
    """A Dataset from a .npz file holding arrays ``X`` (n, d) and ``y`` (n,) integer labels.

    Read with ``allow_pickle=False``; checked as `from_arrays` checks arrays (labels mapped to
    0..C-1, class_names the original values). Save one with ``numpy.savez(path, X=X, y=y)``.

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> np.savez(path, X=np.eye(4), y=np.array([3, 7, 3, 7]))
        >>> load_npz(path, test_fraction=0).class_names
        ['3', '7']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path} is not a .npz file numpy can read ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not a .npz archive with arrays X and y")
    with archive:
        missing = [k for k in ("X", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks the array{'s' if len(missing) > 1 else ''} "
                           f"{' and '.join(missing)} (it holds: {', '.join(archive.files) or 'nothing'})")
        try:
            X, y = archive["X"], archive["y"]
        except ValueError as e:  # object arrays need pickle, which is not allowed
            raise ValueError(f"{path}: {e}") from None
    name = os.path.splitext(os.path.basename(path))[0]
    X, y, class_names = _check_arrays(X, y, path)
    return _split(X, y, test_fraction, seed, name=name, class_names=class_names)


# ----------------------------------------------------------------------------- by name

def load(spec, **kw):
    """The data set named by ``spec``: ``"digits"``, a CIFAR-10 folder, or a ``.npz`` file.

    ``"digits"`` always means scikit-learn's digits (even where a folder of that name exists:
    write ``./digits`` for the folder). A spec that is neither is a ValueError; a path (ending in
    .npz, or with a folder separator) that does not exist is a FileNotFoundError naming it.
    Keyword arguments go to the loader (`load_digits`, `load_cifar10` or `load_npz`); one the
    loader does not take is refused by name.

        >>> load("digits", test_fraction=0.5).X_test.shape
        (899, 64)
        >>> load("digits", n_val=10)
        Traceback (most recent call last):
        ...
        TypeError: option n_val does not apply to 'digits' (load_digits takes: test_fraction, seed)
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data spec must be a string or a path, got {type(spec).__name__}")
    text = os.fspath(spec)
    accepted = "expected 'digits', a CIFAR-10 folder (python version batches) or a .npz file"
    path = os.path.expanduser(text)
    if text == "digits":
        loader, args = load_digits, ()
    elif os.path.isdir(path):
        loader, args = load_cifar10, (path,)
    elif path.lower().endswith(".npz"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"data file {text} does not exist")
        loader, args = load_npz, (path,)
    elif os.path.exists(path):
        raise ValueError(f"cannot load {text!r}: it is a file but not a .npz file; {accepted}")
    elif os.sep in text or (os.altsep and os.altsep in text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"data path {text} does not exist ({accepted})")
    else:
        raise ValueError(f"unknown data set {text!r}: {accepted}")
    takes = [p for p in inspect.signature(loader).parameters if p not in ("folder", "path")]
    unknown = [k for k in kw if k not in takes]
    if unknown:
        raise TypeError(f"option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"do{'' if len(unknown) > 1 else 'es'} not apply to {text!r} "
                        f"({loader.__name__} takes: {', '.join(takes)})")
    return loader(*args, **kw)


# ----------------------------------------------------------------------------- statistics, images

def normalisation(X, *, chunk_rows=None):
    """Per-feature mean and standard deviation of X (n, d), as float64 (d,) numpy arrays.

    mean_j = (1/n) sum_i X_ij,  std_j = sqrt((1/n) sum_i (X_ij - mean_j)^2)  (numpy's ddof=0),
    with std_j = 1 for a constant column (min_j = max_j), so ``(X - mean) / std`` is defined
    everywhere. Computed in two passes over row chunks, so a big uint8 X (numpy or CuPy) is
    never copied to float64 all at once; ``chunk_rows`` sets the chunk (default: ~32 MiB of
    float64 per chunk).

        >>> X = np.array([[0, 4], [2, 4], [4, 4]], dtype=np.uint8)
        >>> mean, std = normalisation(X)
        >>> mean.tolist(), std.round(4).tolist()
        ([2.0, 4.0], [1.633, 1.0])
    """
    if is_cupy_array(X):
        import cupy as xp  # reduce on the device; only the (d,) results come back
    else:
        xp, X = np, np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {tuple(X.shape)}")
    n, d = X.shape
    if n == 0:
        raise ValueError("X has 0 rows: no mean or std to compute")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    step = chunk_rows or max(1, (32 << 20) // (8 * max(d, 1)))
    chunks = [slice(i, min(i + step, n)) for i in range(0, n, step)]
    total = xp.zeros(d)
    lo, hi = X[:1].astype(np.float64)[0], X[:1].astype(np.float64)[0]
    for s in chunks:
        block = X[s].astype(np.float64)
        total += block.sum(axis=0)
        lo, hi = xp.minimum(lo, block.min(axis=0)), xp.maximum(hi, block.max(axis=0))
    mean = total / n
    if xp is not np:
        lo, hi = lo.get(), hi.get()
    bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
    if len(bad):
        raise ValueError(f"X column {int(bad[0])} holds NaN or Inf values: no mean or std")
    # Second pass on the centred values: the one-pass E[x^2] - E[x]^2 loses digits to cancellation.
    sq = xp.zeros(d)
    for s in chunks:
        sq += ((X[s].astype(np.float64) - mean) ** 2).sum(axis=0)
    std = xp.sqrt(sq / n)
    if xp is not np:
        mean, std = mean.get(), std.get()
    std[lo == hi] = 1.0
    return mean, std


def as_images(X, image_shape):
    """Rows of X as images: (n, d) -> (n, *shape) and (d,) -> shape, the layout each set uses.

    image_shape (H, W): each row is the H*W pixels row by row (digits: (8, 8)).
    image_shape (H, W, C): each row is channel-major, C planes of H*W pixels (CIFAR-10: the red
    plane, then green, then blue), returned channels-last as images are shown:
    ``X.reshape(n, C, H, W).transpose(0, 2, 3, 1)``. ``"digits"`` and ``"cifar10"`` name the two.

        >>> x = np.arange(12)                     # C=3 planes of a 2x2 image
        >>> as_images(x, (2, 2, 3))[0, 0].tolist()   # the top-left pixel: R, G, B
        [0, 4, 8]
    """
    shape = {"digits": (8, 8), "cifar10": CIFAR10_SHAPE}.get(image_shape, image_shape) \
        if isinstance(image_shape, str) else image_shape
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (H, W), (H, W, C), 'digits' or 'cifar10', got {image_shape!r}") from None
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C) with positive sizes, got {image_shape!r}")
    X = np.asarray(X) if not hasattr(X, "ndim") else X
    if X.ndim not in (1, 2):
        raise ValueError(f"X must be one row (d,) or rows (n, d), got shape {tuple(X.shape)}")
    d = X.shape[-1]
    if d != int(np.prod(shape)):
        raise ValueError(f"rows of length {d} do not fit image_shape {shape} "
                         f"({' x '.join(map(str, shape))} = {int(np.prod(shape))} values)")
    rows = X.reshape(-1, d)
    if len(shape) == 2:
        images = rows.reshape(len(rows), *shape)
    else:
        H, W, C = shape
        images = rows.reshape(len(rows), C, H, W).transpose(0, 2, 3, 1)
    return images[0] if X.ndim == 1 else images
