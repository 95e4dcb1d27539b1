"""model.summary(): the layer table Keras prints, with output shapes and parameter counts."""
from fastconv.keras.layers.base import _format_shape


def _cells(model, show_connections):
    """One row per layer: name (type), output shape of its first call, params, and what feeds it."""
    first_node, inbound = {}, {}
    for node in model._nodes:
        first_node.setdefault(node.layer, node)
        inbound.setdefault(node.layer, []).extend(t.node.layer.name for t in node.inputs)
    rows = []
    for layer in model.layers:
        # A subclassed model's layers are called inside its call(), not in a graph: shape unknown.
        node = first_node.get(layer)
        row = [f"{layer.name} ({type(layer).__name__})", "?" if node is None else _format_shape(node.output.shape),
               str(layer.count_params())]
        if show_connections:
            row.append(", ".join(inbound.get(layer, [])))
        rows.append(row)
    return rows


def print_summary(model, line_length=None, print_fn=None):
    print_fn = print_fn or print
    # Show the "Connected to" column only when the graph is not a simple chain.
    show_connections = any(len(node.inputs) > 1 for node in model._nodes) or len(model.inputs) > 1
    headers = ["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if show_connections else [])
    rows = _cells(model, show_connections)
    minimum_widths = (29, 26, 12, 30)  # Keras' default column widths
    widths = [max(minimum_widths[i], len(headers[i]) + 3, *(len(row[i]) + 3 for row in rows))
              for i in range(len(headers))]
    total_width = max(line_length or 0, sum(widths) + 1)

    def line(cells):
        return " " + "".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    print_fn(f'Model: "{model.name}"')
    print_fn("_" * total_width)
    print_fn(line(headers))
    print_fn("=" * total_width)
    for i, row in enumerate(rows):
        print_fn(line(row))
        print_fn(("=" if i == len(rows) - 1 else "_") * total_width)
    trainable = sum(v.value.size for v in model.trainable_weights)
    total = model.count_params()
    print_fn(f"Total params: {total:,}")
    print_fn(f"Trainable params: {trainable:,}")
    print_fn(f"Non-trainable params: {total - trainable:,}")
    print_fn("_" * total_width)
