"""gpugrad.plots: the PNGs are written, readable, the right size, and bad input is refused."""
import math

import numpy as np
import pytest

from gpugrad.training import data, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image
    return matplotlib.image.imread(path)


def history_rows(n, val=True, accuracy=True):
    rows = []
    for e in range(1, n + 1):
        row = dict(epoch=e, loss=2 / e, cost=2 / e + 0.1, lr=0.01, seconds=0.5,
                   accuracy=1 - 0.8 / e if accuracy else math.nan)
        if val:
            row.update(val_loss=2.2 / e, val_cost=2.2 / e + 0.1, val_accuracy=1 - 0.9 / e)
        rows.append(row)
    return rows


def drawn_lines(monkeypatch):
    """Record the labels of every curve plotted, per axes title."""
    from matplotlib.axes import Axes
    lines = []
    original = Axes.plot

    def plot(self, *args, **kw):
        lines.append(kw.get("label"))
        return original(self, *args, **kw)
    monkeypatch.setattr(Axes, "plot", plot)
    return lines


def test_history_png_is_written_with_three_panels(tmp_path, monkeypatch):
    lines = drawn_lines(monkeypatch)
    out = plots.plot_history(history_rows(12), tmp_path / "history.png")
    assert out == tmp_path / "history.png"
    image = read_png(out)
    assert image.shape == (380, 1300, 4)  # figsize (13, 3.8) at 100 dpi, RGBA
    assert lines == ["training", "validation"] * 3


def test_history_skips_missing_and_nan_curves(tmp_path, monkeypatch):
    lines = drawn_lines(monkeypatch)
    plots.plot_history(history_rows(5, val=False, accuracy=False), tmp_path / "h.png")
    assert lines == ["training", "training"]  # loss, cost; no accuracy, no validation
    read_png(tmp_path / "h.png")
    lines.clear()
    rows = history_rows(3)
    rows[1]["val_loss"] = None  # a gap in one curve is drawn as a gap, the curve stays
    for row in rows:
        row["val_accuracy"] = float("nan")
    plots.plot_history(rows, tmp_path / "h2.png")
    assert lines == ["training", "validation", "training", "validation", "training"]


def test_history_accepts_a_history_object(tmp_path):
    class History:
        rows = history_rows(1)
    read_png(plots.plot_history(History(), str(tmp_path / "one.png")))


def test_history_refuses_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history([], tmp_path / "h.png")
    with pytest.raises(TypeError, match="history row 1 must be a dict"):
        plots.plot_history([dict(epoch=1, loss=1.0), 3], tmp_path / "h.png")
    with pytest.raises(ValueError, match="history row 0: loss = 'high' is not a number"):
        plots.plot_history([dict(epoch=1, loss="high")], tmp_path / "h.png")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        plots.plot_history(history_rows(2), tmp_path / "no_such_folder" / "h.png")


def test_templates_png_for_grey_digits_and_rgb_cifar(tmp_path):
    rng = np.random.default_rng(0)
    grey = read_png(plots.plot_templates(rng.normal(size=(10, 64)), (8, 8), tmp_path / "digits.png"))
    rgb = read_png(plots.plot_templates(rng.normal(size=(10, 3072)), (32, 32, 3), tmp_path / "cifar.png",
                                        list(data.CIFAR10_CLASSES)))
    assert rgb.shape == (200, 1500, 4)  # one row of 10 tiles, 1.5 in each, 100 dpi
    assert grey.shape == (200, 1600, 4)  # and 1 in more for the colour bar
    # Grey weights on a diverging map: red tiles and blue ones, not R = G = B.
    assert not np.array_equal(grey[..., 0], grey[..., 2])
    grid = read_png(plots.plot_templates(rng.normal(size=(12, 64)), (8, 8), tmp_path / "grid.png"))
    assert grid.shape == (350, 1600, 4)  # 12 classes: two rows of up to 10


def shown_images(monkeypatch):
    """Record (image, keyword arguments) of every imshow, and the colour bars drawn."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    shown, bars = [], []
    imshow, colorbar = Axes.imshow, Figure.colorbar
    monkeypatch.setattr(Axes, "imshow", lambda self, img, **kw: shown.append((img, kw)) or imshow(self, img, **kw))
    monkeypatch.setattr(Figure, "colorbar", lambda self, m, **kw: bars.append(m) or colorbar(self, m, **kw))
    return shown, bars


def tiles_of(mosaic, C, H, W, cols=10):
    """The C tiles of a mosaic as plots lays them out (its corners), and the mosaic without them."""
    _, corners = plots._mosaic(np.zeros((C, H, W)), cols)
    rest = np.array(mosaic, dtype=np.float64, copy=True)
    tiles = []
    for top, left in corners:
        tiles.append(np.array(mosaic[top:top + H, left:left + W]))
        rest[top:top + H, left:left + W] = np.nan
    return tiles, rest


def test_grey_templates_share_one_symmetric_diverging_scale_with_a_colour_bar(tmp_path, monkeypatch):
    """Digits-like weights: each tile is the row itself (not rescaled) on RdBu_r from -m to m,
    m = max |W| over every class, so a positive weight and a negative one, and a strong class and
    a weak one, look different; one colour bar gives the scale; between the tiles, nothing."""
    shown, bars = shown_images(monkeypatch)
    W = np.stack([np.linspace(-1, 1, 64), 0.1 * np.linspace(-1, 1, 64), -3 * np.ones(64)])
    plots.plot_templates(W, (8, 8), tmp_path / "t.png", ["a", "b", "c"])
    [(mosaic, kw)] = shown
    assert len(bars) == 1 and kw["cmap"].name == "RdBu_r" and (kw["vmin"], kw["vmax"]) == (-3.0, 3.0)
    tiles, rest = tiles_of(mosaic, 3, 8, 8)
    for c, tile in enumerate(tiles):
        np.testing.assert_array_equal(tile, W[c].reshape(8, 8))
    assert np.isnan(rest).all()  # gaps and title room: drawn white ("bad" in the colour map)
    shown.clear()
    plots.plot_templates(np.zeros((2, 64)), (8, 8), tmp_path / "z.png")  # all zero: white, no 0/0
    assert (shown[0][1]["vmin"], shown[0][1]["vmax"]) == (-1.0, 1.0)


def test_rgb_templates_scale_each_class_on_its_own(tmp_path, monkeypatch):
    shown, bars = shown_images(monkeypatch)
    W = np.stack([np.arange(3072.0), -1000 * np.arange(3072.0), np.full(3072, 7.0)])
    plots.plot_templates(W, (32, 32, 3), tmp_path / "t.png", ["up", "down", "flat"])
    [(mosaic, kw)] = shown
    images = data.as_images(W, (32, 32, 3))
    _, corners = plots._mosaic(np.zeros((3, 32, 32)), 10)
    rgba = [mosaic[t:t + 32, l:l + 32] for t, l in corners]
    np.testing.assert_allclose(rgba[0][..., :3], images[0] / 3071)
    np.testing.assert_allclose(rgba[1][..., :3], 1 - images[0] / 3071)
    np.testing.assert_array_equal(rgba[2][..., :3], np.full((32, 32, 3), 0.5))
    assert all((tile[..., 3] == 1).all() for tile in rgba)  # opaque tiles, transparent between
    assert mosaic[..., 3].sum() == 3 * 32 * 32
    assert not bars and "cmap" not in kw  # each template on its own scale: no common bar to read


def test_mosaic_places_every_tile_apart_in_rows_of_cols():
    tiles = np.arange(12 * 2 * 3, dtype=np.float64).reshape(12, 2, 3)
    image, corners = plots._mosaic(tiles, 5)
    assert len(corners) == 12 and len({top for top, _ in corners}) == 3  # 5 + 5 + 2
    assert np.count_nonzero(~np.isnan(image)) == tiles.size  # no tile overlaps another
    for (top, left), tile in zip(corners, tiles):
        np.testing.assert_array_equal(image[top:top + 2, left:left + 3], tile)
        assert top >= 2  # room above each row for its titles


def test_history_shades_the_epochs_whose_cost_ran_away(tmp_path, monkeypatch):
    """The epochs whose training cost is above 1.5x the lowest before them, shaded on the cost
    panel (one span per run of such epochs); a curve spanning more than 30x gets a log scale."""
    from matplotlib.axes import Axes
    spans, scales = [], []
    axvspan, set_yscale = Axes.axvspan, Axes.set_yscale
    monkeypatch.setattr(Axes, "axvspan", lambda self, lo, hi, **kw: spans.append((self.figure.axes.index(self), lo, hi))
                        or axvspan(self, lo, hi, **kw))
    monkeypatch.setattr(Axes, "set_yscale", lambda self, v, **kw: scales.append(v) or set_yscale(self, v, **kw))
    costs = [23.0, 189.3, 88.7, 17.1, 20.0, 37.0, 14.5, 174.5, 132.4, 22.1]
    rows = [dict(epoch=e, loss=c - 1, cost=c) for e, c in enumerate(costs, 1)]
    plots.plot_history(rows, tmp_path / "h.png")
    assert spans == [(1, 1.5, 3.5), (1, 5.5, 6.5), (1, 7.5, 10.5)]  # the middle panel: cost
    assert scales == []  # 14.5 .. 189.3 spans 13x: linear
    spans.clear()
    plots.plot_history(history_rows(12), tmp_path / "fine.png")
    assert spans == []
    rows = [dict(epoch=e, loss=100.0 / 4 ** e, cost=100.0 / 4 ** e) for e in range(1, 5)]
    plots.plot_history(rows, tmp_path / "log.png")
    assert scales == ["log", "log"]  # loss and cost fall 64x: a log scale shows every epoch


def test_templates_refuse_bad_input(tmp_path):
    W = np.zeros((3, 64))
    with pytest.raises(ValueError, match=r"W must be 2-D \(C, d\).*shape \(64,\)"):
        plots.plot_templates(W[0], (8, 8), tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"rows of length 64 do not fit image_shape \(32, 32, 3\)"):
        plots.plot_templates(W, (32, 32, 3), tmp_path / "t.png")
    with pytest.raises(ValueError, match="class_names has 2 names but W has 3 rows"):
        plots.plot_templates(W, (8, 8), tmp_path / "t.png", ["a", "b"])
    with pytest.raises(ValueError, match="only 1 .grey. or 3 .RGB. channels"):
        plots.plot_templates(np.zeros((3, 128)), (8, 8, 2), tmp_path / "t.png")
    W[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"W\[1, 5\] = nan is not finite"):
        plots.plot_templates(W, (8, 8), tmp_path / "t.png")
