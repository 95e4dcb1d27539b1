"""What the `fastconv train --plot` figure contains, checked on the drawn figure for 1, 3 and 12 epochs."""
import numpy as np
import pytest

from fastconv import keras

matplotlib = pytest.importorskip("matplotlib")  # the optional `plot` extra
matplotlib.use("Agg")
from fastconv.plotting import plot_training, training_figure  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402


def conv_model(filters=8):
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), keras.layers.Conv2D(filters, 3),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.build((None, 28, 28, 1))
    return model


def history_of(epochs):
    t = np.arange(1, epochs + 1)
    return {"loss": list(0.5 / t), "accuracy": list(1 - 0.1 / t),
            "val_loss": list(0.4 / t + 0.01), "val_accuracy": list(1 - 0.08 / t)}


def confusion():
    rng = np.random.default_rng(0)
    return np.diag(rng.integers(800, 1100, 10)) + rng.integers(0, 8, (10, 10))


@pytest.fixture
def drawn():
    figures = []

    def draw(epochs, model=None):
        figure = training_figure(history_of(epochs), confusion(), [str(d) for d in range(10)], model or conv_model())
        figure.canvas.draw()
        figures.append(figure)
        return figure

    yield draw
    for figure in figures:
        plt.close(figure)


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_curves_mark_every_epoch_on_whole_number_ticks_clear_of_the_legend(drawn, epochs):
    curves = drawn(epochs).subfigs[0].axes
    assert len(curves) == 2  # loss, accuracy
    for axes in curves:
        assert len(axes.lines) == 2
        for line in axes.lines:
            assert line.get_marker() == "o" and len(line.get_xdata()) == epochs  # a single epoch shows too
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks)
        assert set(range(1, epochs + 1)) >= set(map(int, ticks))
        # The legend covers no data point.
        legend = axes.get_legend().get_window_extent()
        for line in axes.lines:
            points = axes.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
            inside = ((points[:, 0] >= legend.x0) & (points[:, 0] <= legend.x1)
                      & (points[:, 1] >= legend.y0) & (points[:, 1] <= legend.y1))
            assert not inside.any(), f"{line.get_label()} point under the legend of {axes.get_ylabel()}"


def test_confusion_counts_read_on_their_cells(drawn):
    figure = drawn(3)
    axes = figure.subfigs[1].axes[0]
    image = axes.get_images()[0]
    shares = image.get_array()
    texts = axes.texts
    matrix = confusion()
    assert len(texts) == np.count_nonzero(matrix)
    for text in texts:
        column, row = map(int, np.rint(text.get_position()))
        assert text.get_text() == str(matrix[row, column])
        cell = np.array(image.cmap(image.norm(shares[row, column]))[:3]) @ [0.2126, 0.7152, 0.0722]
        ink = np.array(matplotlib.colors.to_rgb(text.get_color())) @ [0.2126, 0.7152, 0.0722]
        assert abs(cell - ink) > 0.4, f"count {text.get_text()} at ({row}, {column}) hard to read"
    diagonal = [text for text in texts if np.allclose(*text.get_position())]
    assert all(text.get_color() == "white" for text in diagonal)


def test_titles_overlap_no_panel_content(drawn):
    figure = drawn(3, conv_model(filters=32))
    renderer = figure.canvas.get_renderer()
    filters = figure.subfigs[2]
    title = filters._suptitle.get_window_extent(renderer)
    images = [axes.get_window_extent(renderer) for axes in filters.axes if axes.get_images()]
    assert len(images) == 32
    assert not any(overlaps(title, box) for box in images)
    for panel in figure.subfigs:
        heading = panel._suptitle.get_window_extent(renderer)
        for axes in panel.axes:
            assert not overlaps(heading, axes.get_window_extent(renderer))


def test_plot_training_writes_a_png(tmp_path):
    path = tmp_path / "training.png"
    plot_training(path, history_of(1), confusion(), [str(d) for d in range(10)], conv_model())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
