"""The PNG of `fastconv train --plot`: training curves, confusion matrix and first-layer filters."""
import numpy as np


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
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernel = _first_conv_kernel(model)
    fig = plt.figure(figsize=(15, 4.5), constrained_layout=True)
    grid = fig.add_gridspec(1, 3)

    curves = fig.add_subplot(grid[0])
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in history:
            curves.plot(epochs, history[key], style, color="tab:red", label=key)
    curves.set_xlabel("epoch")
    curves.set_ylabel("loss")
    accuracy = curves.twinx()
    for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
        if key in history:
            accuracy.plot(epochs, history[key], style, color="tab:blue", label=key)
    accuracy.set_ylabel("accuracy")
    curves.legend(loc="center left")
    accuracy.legend(loc="center right")
    curves.set_title("training curves")

    matrix = fig.add_subplot(grid[1])
    matrix.imshow(np.log1p(confusion), cmap="Blues")
    for (i, j), value in np.ndenumerate(confusion):
        matrix.text(j, i, str(value), ha="center", va="center", fontsize=6)
    matrix.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    matrix.set_yticks(range(len(class_names)), class_names, fontsize=7)
    matrix.set_xlabel("predicted")
    matrix.set_ylabel("true")
    matrix.set_title("confusion matrix (test)")

    if kernel is not None:
        filters = kernel[:, :, 0, :]  # first input channel of each filter
        count = filters.shape[-1]
        cols = int(np.ceil(np.sqrt(count)))
        rows = int(np.ceil(count / cols))
        inner = grid[2].subgridspec(rows, cols, wspace=0.05, hspace=0.05)
        for k in range(count):
            ax = fig.add_subplot(inner[k // cols, k % cols])
            ax.imshow(filters[:, :, k], cmap="gray")
            ax.set_axis_off()
        fig.text(0.83, 0.97, "first-layer filters", ha="center")
    fig.savefig(path, dpi=110)
    plt.close(fig)
