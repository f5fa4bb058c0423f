"""Saving and reading the project's files: JSON that strict readers take, metadata inside an .npz,
files written atomically (a kill never leaves a torn file) and .npz files read with errors that
name the file. The models (``save_model``), the trainer's checkpoints, ``gpugrad train``'s run
files and ``gpugrad bench``'s JSON are all written and read through here.

    >>> decode_json(encode_json({"epoch": 3, "lr": 0.1}))
    {'epoch': 3, 'lr': 0.1}
    >>> json_safe([1.0, float("nan"), np.float32(2)])
    [1.0, None, 2.0]
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

__all__ = ["json_safe", "encode_json", "decode_json", "atomic_write", "atomic_savez", "read_npz", "npz_arrays",
           "not_npz_kind"]


def json_safe(obj):
    """``obj`` (dicts, lists, numbers) as strict JSON takes it: numpy floats as floats, NaN and
    infinities as null."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def encode_json(obj) -> np.ndarray:
    """JSON text as a uint8 array, so metadata rides in an .npz without pickling."""
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def decode_json(a: np.ndarray):
    return json.loads(np.asarray(a, dtype=np.uint8).tobytes().decode())


def atomic_write(path, write) -> str:
    """Write the file ``path`` atomically: ``write(f)`` fills a temporary file in the same folder,
    which is flushed to disk and renamed over ``path``. A process killed at any moment leaves
    either the old file or the new one, never a torn one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make a saved file private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # the rename itself reaches the disk once the folder is synced
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_savez(path, arrays: dict) -> str:
    """``arrays`` as the .npz ``path``, written atomically (``atomic_write``)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def not_npz_kind(head: bytes) -> str | None:
    """What a file that begins with ``head`` is, when it is not a zip archive (an .npz); else None."""
    if head.startswith(b"PK"):
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a zip archive"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return "not a zip archive"


def read_npz(path, what="file") -> dict:
    """All arrays of an .npz (no pickles), with a clear error naming the file when it is missing,
    not an .npz (a text file, say), or torn."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a gpugrad {what}")
    try:
        return npz_arrays(path)
    except ValueError as e:
        raise ValueError(f"{path}: not a gpugrad {what}: {e}") from None


def npz_arrays(path) -> dict:
    """All arrays of the .npz file at ``path``, loaded without pickles. A file that is not an .npz
    archive, or a torn one, raises ValueError with the reason alone ("a text file, not an .npz
    archive"), for the caller to say which file and what it was expected to be."""
    with open(path, "rb") as f:
        kind = not_npz_kind(f.read(64))
    if kind is not None:
        raise ValueError(f"{kind}, not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # torn (BadZipFile, EOFError, zlib.error), pickled objects: say what numpy said
        raise ValueError(f"not a readable .npz archive ({type(e).__name__}: {e})") from None
