"""Figures of a training run, written as PNG files: the learning curves and the class templates.

Both functions draw on a matplotlib ``Figure`` attached to the Agg canvas directly, not through
``pyplot``: no window ever opens, the backend a user has chosen (a notebook's, say) is left as it
is, and no figure stays registered in pyplot after the file is written. matplotlib is imported
inside the functions, so ``import gpugrad`` does not pay for it.

- `plot_history`: loss, cost and accuracy per epoch, training against validation, the three
  panels of the DD2424 reports; epochs where the cost ran away (the trainer's rising-cost
  warning) are shaded.
- `plot_templates`: each row of a linear classifier's W (C, d) shown as an image, the class
  "templates" the lecture shows for CIFAR-10: grey images on one diverging scale shared by all
  classes (positive and negative weights apart, with a colour bar), RGB images min-max scaled
  each on its own.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..backends import is_cupy_array
from .data import as_images
from .trainer import cost_too_high

__all__ = ["plot_history", "plot_templates"]

_PANELS = (("loss", "loss"), ("cost", "cost (loss + L2 penalty)"), ("accuracy", "accuracy"))


def _new_figure(width, height):
    """A Figure drawing on the Agg canvas (PNG in memory, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_out_path(path):
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)}: folder {folder} does not exist")


def _column(rows, key):
    """rows[i][key] as a float array, NaN where a row lacks it (or holds None)."""
    values = []
    for i, row in enumerate(rows):
        v = row.get(key)
        try:
            values.append(np.nan if v is None else float(v))
        except (TypeError, ValueError):
            raise ValueError(f"history row {i}: {key} = {v!r} is not a number") from None
    return np.array(values, dtype=np.float64)


def plot_history(history_rows, path, *, title=None):
    """Write the learning curves of a run as one PNG with three panels: loss, cost, accuracy.

    history_rows: one dict per epoch (``Trainer.history.rows``, or a History itself) with keys
    epoch, loss, cost, accuracy, val_loss, val_cost, val_accuracy (lr and seconds are not drawn).
    Each panel plots the training value and the validation value (``val_<name>``) against the
    epoch; a curve whose values are all missing or NaN is left out, and a panel with no curve
    says so. On the cost panel, epochs whose training cost is above 1.5 times the lowest before
    them (``gpugrad.trainer.cost_too_high``: a learning rate too high) are shaded red; loss and
    cost curves that span more than 30x are drawn on a log scale. Returns ``path``.

        >>> import tempfile, os
        >>> rows = [dict(epoch=e, loss=1 / e, cost=1 / e + 0.1, accuracy=1 - 0.5 / e,
        ...              val_loss=1.2 / e, val_cost=1.2 / e + 0.1) for e in (1, 2, 3)]
        >>> out = plot_history(rows, os.path.join(tempfile.mkdtemp(), "history.png"))
        >>> open(out, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    rows = _history_rows(history_rows)
    _check_out_path(path)
    epochs = _column(rows, "epoch")
    if np.isnan(epochs).any():
        epochs = np.arange(1, len(rows) + 1, dtype=np.float64)  # rows without numbers: count them
    # Markers make a short run (or an isolated finite value among NaNs) visible as points.
    style = dict(marker="o", markersize=3) if len(rows) <= 60 else {}
    runaway = _spans(epochs, cost_too_high(_column(rows, "cost")))
    fig = _new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    for ax, (key, label) in zip(axes, _PANELS):
        _history_panel(ax, rows, epochs, key, label, style, runaway if key == "cost" else [])
    fig.suptitle(title or f"Training history ({len(rows)} epoch{'s' if len(rows) != 1 else ''})")
    fig.savefig(path, format="png", dpi=100)
    return path


def _history_rows(history_rows):
    """The per-epoch dicts of a History or a list of them, refusing anything else by what it is."""
    rows = getattr(history_rows, "rows", history_rows)
    if isinstance(rows, dict) or not hasattr(rows, "__len__"):
        raise TypeError(f"history_rows must be a list of per-epoch dicts, got {type(rows).__name__}")
    rows = list(rows)
    if not rows:
        raise ValueError("history_rows is empty: no epoch to plot")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"history row {i} must be a dict, got {type(row).__name__}")
    return rows


def _history_panel(ax, rows, epochs, key, label, style, runaway):
    """One panel of ``plot_history``: the training and validation curves of ``key`` against the
    epoch, the ``runaway`` spans shaded red, a log scale for a loss or cost spanning over 30x."""
    drawn, shown = 0, []
    for prefix, name, color in (("", "training", "tab:blue"), ("val_", "validation", "tab:orange")):
        values = _column(rows, prefix + key)
        if np.isnan(values).all():
            continue
        ax.plot(epochs, values, color=color, label=name, **style)
        shown.append(values[np.isfinite(values)])
        drawn += 1
    for k, (lo, hi) in enumerate(runaway):
        ax.axvspan(lo, hi, color="tab:red", alpha=0.15, lw=0,
                   label="cost > 1.5x its lowest" if k == 0 else None)
    if key in ("loss", "cost") and shown:
        finite = np.concatenate(shown)
        if finite.size and finite.min() > 0 and finite.max() > 30 * finite.min():
            ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(key)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center",
                transform=ax.transAxes, color="gray")


def _spans(epochs, flags):
    """[(first - 0.5, last + 0.5)] of each run of consecutive flagged epochs."""
    spans, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((float(epochs[start]) - 0.5, float(epochs[i - 1]) + 0.5))
            start = None
    return spans


def _diverging():
    """RdBu reversed (red positive, blue negative, white 0), white where there is no tile."""
    from matplotlib import colormaps
    return colormaps["RdBu_r"].with_extremes(bad="white")


def _mosaic(tiles, cols):
    """The (C, H, W[, 3]) tiles laid out in rows of ``cols`` in one image, with gaps (NaN for grey
    tiles, transparent for RGB ones) between them and room above each row for its titles.
    Returns (image, [(top, left) pixel of each tile])."""
    C, H, W = tiles.shape[:3]
    gap, head = max(1, round(W / 6)), max(2, round(H / 3))
    rows = math.ceil(C / cols)
    shape = (rows * (head + H), cols * (W + gap) - gap)
    if tiles.ndim == 3:
        image = np.full(shape, np.nan)
    else:
        image = np.zeros(shape + (4,))
        tiles = np.concatenate([tiles, np.ones(tiles.shape[:3] + (1,))], axis=3)  # opaque tiles
    corners = []
    for c in range(C):
        top, left = (c // cols) * (head + H) + head, (c % cols) * (W + gap)
        image[top:top + H, left:left + W] = tiles[c]
        corners.append((top, left))
    return image, corners


def _host_weights(W):
    """W (C, d) as a float64 numpy array: 2-D, not empty, real numbers, finite (the first
    non-finite entry named)."""
    W = W.get() if is_cupy_array(W) else np.asarray(W)  # plotting happens on the host
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (C, d), one row per class, got shape {W.shape}")
    C, d = W.shape
    if C == 0 or d == 0:
        raise ValueError(f"W is empty (shape {W.shape})")
    if W.dtype.kind not in "biuf":
        raise TypeError(f"W must hold real numbers, got dtype {W.dtype}")
    W = W.astype(np.float64)
    if not np.isfinite(W).all():
        c, j = map(int, np.argwhere(~np.isfinite(W))[0])
        raise ValueError(f"W[{c}, {j}] = {W[c, j]} is not finite: nothing sensible to show")
    return W


def _template_images(W, image_shape):
    """The rows of W as (C, H, W) grey or (C, H, W, 3) RGB images (one channel squeezed out)."""
    images = as_images(W, image_shape)  # (C, H, W) or (C, H, W, channels); checks d fits
    if images.ndim == 4:
        if images.shape[-1] == 1:
            images = images[..., 0]
        elif images.shape[-1] != 3:
            raise ValueError(f"image_shape {tuple(image_shape)}: only 1 (grey) or 3 (RGB) "
                             f"channels can be shown, got {images.shape[-1]}")
    return images


def _template_tiles(images):
    """(tiles, imshow options): grey images as they are on one symmetric diverging scale; RGB
    images each min-max scaled to [0, 1] (a constant one mid-grey)."""
    C = images.shape[0]
    if images.ndim == 3:
        m = float(np.abs(images).max()) or 1.0  # all zeros: any symmetric scale shows white
        return images, dict(cmap=_diverging(), vmin=-m, vmax=m)
    lo = images.reshape(C, -1).min(axis=1)
    span = images.reshape(C, -1).max(axis=1) - lo
    shape = (C, 1, 1, 1)
    tiles = np.where(span.reshape(shape) > 0,
                     (images - lo.reshape(shape)) / np.where(span > 0, span, 1).reshape(shape), 0.5)
    return tiles, {}


def plot_templates(W, image_shape, path, class_names=None, *, title=None):
    """Write the rows of W (C, d) as images, one tile per class, to a PNG; returns ``path``.

    Row c is laid out as an image by `gpugrad.data.as_images` (image_shape (H, W) for grey
    images such as digits' (8, 8); (H, W, 3) for CIFAR-10's channel-major rows).

    - One channel: the weights themselves on a diverging colour map (red positive, blue
      negative, white 0), one symmetric scale [-m, m] with m = max |W| for every tile, and a
      colour bar: the sign of a weight and its size against the other classes' read directly.
    - RGB: each template min-max scaled on its own, ``(w - min w) / (max w - min w)``, so each
      uses the full range (a constant row shows mid-grey), as the course shows CIFAR-10's.

    Tiles go in rows of at most 10, titled by ``class_names`` (default "0".."C-1"). W may be a
    numpy or CuPy array.

        >>> import tempfile, os
        >>> W = np.random.default_rng(0).normal(size=(3, 64))
        >>> out = plot_templates(W, (8, 8), os.path.join(tempfile.mkdtemp(), "W.png"), ["a", "b", "c"])
        >>> os.path.getsize(out) > 0
        True
    """
    images = _template_images(_host_weights(W), image_shape)
    C = images.shape[0]
    if class_names is None:
        class_names = [str(c) for c in range(C)]
    class_names = [str(s) for s in class_names]
    if len(class_names) != C:
        raise ValueError(f"class_names has {len(class_names)} names but W has {C} rows (classes)")
    _check_out_path(path)
    grey = images.ndim == 3
    tiles, options = _template_tiles(images)
    cols = min(C, 10)
    n_rows = math.ceil(C / cols)
    mosaic, corners = _mosaic(tiles, cols)
    fig = _new_figure(1.5 * cols + (1.0 if grey else 0.0), 1.5 * n_rows + 0.5)
    ax = fig.add_subplot()
    ax.set_axis_off()
    # One image of all the tiles in one axes: drawing and laying out ten axes took seconds.
    shown = ax.imshow(mosaic, interpolation="nearest", **options)
    for (top, left), name in zip(corners, class_names):
        ax.text(left + tiles.shape[2] / 2 - 0.5, top - 0.7, name, ha="center", va="bottom", fontsize=9)
    if grey:
        fig.colorbar(shown, ax=ax, shrink=0.9, label="weight")
    scale = "one scale for all, red > 0 > blue" if grey else "each min-max scaled"
    fig.suptitle(title or f"Class templates (rows of W, {C} classes; {scale})")
    fig.savefig(path, format="png", dpi=100)
    return path
