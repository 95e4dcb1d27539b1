"""The PNG of `fastconv train --plot`: training curves, confusion matrix and first-layer filters.

Three panels side by side, each with its own title: loss and accuracy per epoch (training solid,
validation dashed, every epoch marked, whole-number epoch ticks, legends placed clear of the data),
the test set's confusion matrix coloured by the share of each true class (counts written in a colour
that reads on the cell), and the first convolution's filters.
"""
import numpy as np

TRAINING_COLOR, VALIDATION_COLOR = "tab:blue", "tab:orange"
# Beyond this many epochs the per-epoch markers would crowd the lines; below it they are what shows a
# single epoch at all.
MARKER_EPOCHS = 30


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'fastconv[plot]'") from None


def _first_conv_kernel(model):
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            return layer.get_weights()[0]
    return None


def plot_training(path, history, confusion, class_names, model):
    """Write the figure to ``path`` (PNG)."""
    figure = training_figure(history, confusion, class_names, model)
    import matplotlib.pyplot as plt
    figure.savefig(path, dpi=120)
    plt.close(figure)


def training_figure(history, confusion, class_names, model):
    """The figure ``plot_training`` writes, as a matplotlib Figure (closed by the caller)."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernel = _first_conv_kernel(model)
    figure = plt.figure(figsize=(16, 5.6), layout="constrained")
    panels = figure.subfigures(1, 3 if kernel is not None else 2,
                               width_ratios=[1.0, 1.15, 0.9] if kernel is not None else [1.0, 1.15], wspace=0.04)
    _plot_curves(panels[0], history)
    _plot_confusion(panels[1], np.asarray(confusion), class_names)
    if kernel is not None:
        _plot_filters(panels[2], kernel)
    return figure


def _plot_curves(panel, history):
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    loss_axes, accuracy_axes = panel.subplots(2, 1, sharex=True)
    panel.suptitle("training curves", fontsize="large")
    marker = {"marker": "o", "markersize": 4} if len(epochs) <= MARKER_EPOCHS else {}
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for key, color, style, label in ((metric, TRAINING_COLOR, "-", "training"),
                                         (f"val_{metric}", VALIDATION_COLOR, "--", "validation")):
            values = history.get(key)
            if values:
                axes.plot(epochs[:len(values)], values, style, color=color, label=label, **marker)
        axes.set_ylabel(metric)
        axes.grid(True, alpha=0.3)
        final = history.get(f"val_{metric}") or history.get(metric)
        if final:
            which = "validation" if history.get(f"val_{metric}") else "training"
            axes.set_title(f"{metric}: {final[-1]:.4f} ({which}, last epoch)", fontsize="medium")
        if axes.lines:
            axes.legend(loc="best", fontsize="small", framealpha=0.9)
    accuracy_axes.set_xlabel("epoch")
    if 0 < len(epochs) <= 15:
        accuracy_axes.set_xticks(epochs)
    else:
        accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs):
        accuracy_axes.set_xlim(0.5, len(epochs) + 0.5)


def _plot_confusion(panel, confusion, class_names):
    axes = panel.subplots()
    totals = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    colormap = "Blues"
    axes.imshow(share, cmap=colormap, vmin=0.0, vmax=1.0)
    import matplotlib
    rgba = matplotlib.colormaps[colormap](share)
    luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    fontsize = 7 if len(class_names) <= 10 else 5
    for (i, j), value in np.ndenumerate(confusion):
        if value == 0:
            continue  # empty cells stay blank, so the mistakes stand out
        axes.text(j, i, str(value), ha="center", va="center", fontsize=fontsize,
                  color="white" if luminance[i, j] < 0.5 else "black")
    axes.set_xticks(range(len(class_names)), class_names, rotation=90 if max(map(len, class_names)) > 2 else 0,
                    fontsize=8)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    correct, total = int(np.trace(confusion)), int(confusion.sum())
    accuracy = f", accuracy {correct / total:.4f}" if total else ""
    panel.suptitle(f"confusion matrix (test set{accuracy})", fontsize="large")
    axes.set_title("colour: share of each true class", fontsize="small")


def _plot_filters(panel, kernel):
    kh, kw, channels, count = kernel.shape
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    grid = panel.subplots(rows, cols, squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.08})
    for k, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if k >= count:
            continue
        weights = kernel[:, :, :, k]
        if channels == 3:  # colour filters: each scaled to the full range, mid-grey at zero
            scale = np.abs(weights).max() or 1.0
            axes.imshow(0.5 + 0.5 * weights / scale, interpolation="nearest")
        else:  # the first input channel, grey at zero, symmetric about it
            scale = float(np.abs(weights[:, :, 0]).max()) or 1.0
            axes.imshow(weights[:, :, 0], cmap="gray", vmin=-scale, vmax=scale, interpolation="nearest")
    channel_note = "" if channels in (1, 3) else ", input channel 1"
    panel.suptitle(f"first-layer filters ({count} of {kh}x{kw}{channel_note})", fontsize="large")
