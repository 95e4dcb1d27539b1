"""model.summary() in Keras 3's layout: a box-drawn table of the layers (name and type, output shape,
parameter count and, for graphs that are not a plain chain, what each layer is connected to),
then the total, trainable and non-trainable parameter counts with their sizes in bytes.

Keras 3 draws the table with `rich`; this draws the same characters with no dependency: the column
widths follow Keras' positions and rich's rule for fitting columns into `line_length`, and text too
long for its cell wraps at spaces (or is cut where it has none) as rich wraps it.
"""
import re
import shutil

# rich's "heavy head" box: (left, line, cross, right) for each kind of rule.
_TOP = ("┏", "━", "┳", "┓")
_HEAD_BOTTOM = ("┡", "━", "╇", "┩")
_ROW_RULE = ("├", "─", "┼", "┤")
_BOTTOM = ("└", "─", "┴", "┘")
_HEAD_SIDES = ("┃", "┃", "┃")
_ROW_SIDES = ("│", "│", "│")


def _format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def readable_memory_size(size):
    """Bytes in Keras' units: "213.04 KB" (powers of 1024, two decimals)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def _count_and_bytes(arrays):
    unique = {id(a): a for a in arrays}.values()
    return sum(int(a.size) for a in unique), sum(int(a.nbytes) for a in unique)


def _wrap(text, width):
    """rich's word wrap with ellipsis overflow: lines of at most `width` characters broken before a
    word that does not fit; a word longer than a line gets a line of its own, cut to end in "…"."""
    breaks, offset = [], 0
    for match in re.finditer(r"\s*\S+\s*", text):
        start, word = match.start(), match.group(0)
        length = len(word.rstrip())
        if width - offset >= length:
            offset += len(word)
        elif length > width or (offset and start):
            if start:
                breaks.append(start)
            offset = len(word)
    bounds = [0] + breaks + [len(text)]
    lines = [text[a:b].rstrip() for a, b in zip(bounds, bounds[1:])] or [""]
    return [line if len(line) <= width else line[:width - 1] + "…" for line in lines]


def _align(text, width, justify):
    if justify == "right":
        return text.rjust(width)
    if justify == "center":
        left = (width - len(text)) // 2
        return (" " * left + text).ljust(width)
    return text.ljust(width)


def _column_widths(positions, line_length):
    """Keras' column widths from relative positions, shrunk as rich fits them (with one space of
    padding each side) between the borders of a table line_length wide."""
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    widths, current = [], 0
    for position in positions:
        width = position - current
        if width < 4:
            raise ValueError("Insufficient console width to print summary: pass a larger line_length")
        widths.append(width)
        current += width
    available = line_length - (len(widths) + 1)
    cells = [min(width + 2, available) for width in widths]
    excess, remaining = sum(cells) - available, len(cells)
    if excess > 0:  # rich's last resort: take the excess from the columns evenly, left first
        for i, cell in enumerate(cells):
            taken = min(cell, round(excess / remaining))
            cells[i] -= taken
            excess -= taken
            remaining -= 1
    return cells


def _rule(parts, cells):
    left, line, cross, right = parts
    return left + cross.join(line * cell for cell in cells) + right


def _row_lines(values, cells, justifies, sides):
    wrapped = [_wrap(value, cell - 2) for value, cell in zip(values, cells)]
    height = max(len(lines) for lines in wrapped)
    rendered = []
    for k in range(height):
        parts = [" " + _align(lines[k] if k < len(lines) else "", cell - 2, justify) + " "
                 for lines, cell, justify in zip(wrapped, cells, justifies)]
        rendered.append(sides[0] + sides[1].join(parts) + sides[2])
    return rendered


def _is_chain(model):
    """Keras shows "Connected to" unless the graph is a plain chain: one node per depth, each with at
    most one input, and no layer called twice."""
    nodes = model._nodes or []
    consumers = {}
    for node in nodes:
        for tensor in node.inputs:
            consumers[tensor.node] = consumers.get(tensor.node, 0) + 1
    layers = [node.layer for node in nodes]
    return (len(model.inputs) <= 1 and len(model.outputs) <= 1 and len(set(layers)) == len(layers)
            and all(len(node.inputs) <= 1 for node in nodes) and all(count <= 1 for count in consumers.values()))


def _keras_layer_order(model):
    """A functional model's layers (InputLayers too) in Keras' order: farthest from the outputs
    first; at equal distance, in the order a depth-first walk from the outputs first meets them."""
    first_seen, stack, visited = {}, [t.node for t in reversed(model.outputs)], set()
    while stack:
        node = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        first_seen.setdefault(node.layer, len(first_seen))
        stack.extend(t.node for t in reversed(node.inputs))
    node_depth, layer_depth = {}, {}
    for node in reversed(model._nodes):
        depth = max(node_depth.get(node, 0), layer_depth.get(node.layer, 0))
        layer_depth[node.layer] = node_depth[node] = depth
        for tensor in node.inputs:
            node_depth[tensor.node] = max(node_depth.get(tensor.node, 0), depth + 1)
    layers = {node.layer for node in model._nodes}
    return sorted(layers, key=lambda layer: (-layer_depth[layer], first_seen.get(layer, -1)))


def _graph_facts(model):
    """For each layer of the model: its output shape (of its last call, as Keras shows) and the
    "Connected to" text, inbound layer[node index][tensor index] for every call."""
    node_index, shapes, connections = {}, {}, {}
    calls = {}
    for node in model._nodes or []:
        node_index[node] = calls.get(node.layer, 0)
        calls[node.layer] = node_index[node] + 1
    for node in model._nodes or []:
        if node.output is not None:
            shapes[node.layer] = _format_shape(node.output.shape)
        links = [f"{t.node.layer.name}[{node_index.get(t.node, 0)}][0]" for t in node.inputs]
        connections.setdefault(node.layer, []).extend(links)
    return shapes, {layer: ", ".join(links) or "-" for layer, links in connections.items()}


def _layer_index_range(layers, layer_range):
    """Keras' layer_range: the first layer matching its first regex to the last matching its second."""
    if layer_range is None:
        return 0, len(layers)
    if len(layer_range) != 2 or not all(isinstance(name, str) for name in layer_range):
        raise ValueError(f"layer_range must be two layer names (or regexes), got {layer_range!r}")
    lower = [i for i, layer in enumerate(layers) if re.match(layer_range[0], layer.name)]
    upper = [i for i, layer in enumerate(layers) if re.match(layer_range[1], layer.name)]
    if not lower or not upper:
        raise ValueError(f"layer_range {layer_range!r} matches no layer names of the model")
    if min(lower) > max(upper):
        return min(upper), max(lower) + 1
    return min(lower), max(upper) + 1


def summary_text(model, line_length=None, positions=None, expand_nested=False, show_trainable=False,
                 layer_range=None):
    """The summary as one string, ending with a newline."""
    from fastconv.keras.models import Sequential
    sequential = isinstance(model, Sequential) or model._nodes is None or _is_chain(model)
    if sequential:
        default_length, positions = 88, positions or [0.45, 0.80, 1.0]
        header, justify = ["Layer (type)", "Output Shape", "Param #"], ["left", "left", "right"]
    else:
        default_length, positions = 108, positions or [0.3, 0.56, 0.74, 1.0]
        header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
        justify = ["left", "left", "right", "left"]
    if show_trainable:
        default_length += 12
        positions = [p * 0.90 for p in positions] + [1.0]
        header, justify = header + ["Trainable"], justify + ["center"]
    line_length = line_length or min(default_length, shutil.get_terminal_size().columns - 4)
    cells = _column_widths(list(positions), line_length)

    def rows_for(owner, layer, level):
        shapes, connections = _graph_facts(owner)
        prefix = "   " * level + "└ " if level else ""
        fields = [f"{prefix}{layer.name} ({type(layer).__name__})", shapes.get(layer, "?"),
                  f"{layer.count_params():,}"]
        if not sequential:
            fields.append(connections.get(layer, "-"))
        if show_trainable:
            fields.append(("Y" if layer.trainable else "N") if layer.weights else "-")
        rows = [fields]
        inner = getattr(layer, "layers", None)
        if expand_nested and inner:
            rows += [row for sub in inner for row in rows_for(layer, sub, level + 1)]
        return rows

    layers = model.layers if isinstance(model, Sequential) or model._nodes is None else _keras_layer_order(model)
    start, stop = _layer_index_range(layers, layer_range)
    lines = [f'Model: "{model.name}"', _rule(_TOP, cells), *_row_lines(header, cells, justify, _HEAD_SIDES),
             _rule(_HEAD_BOTTOM, cells)]
    rows = [row for layer in layers[start:stop] for row in rows_for(model, layer, 0)]
    for i, row in enumerate(rows):
        if i:
            lines.append(_rule(_ROW_RULE, cells))
        lines += _row_lines(row, cells, justify, _ROW_SIDES)
    lines.append(_rule(_BOTTOM, cells))

    trainable = _count_and_bytes([v.value for v in model.trainable_weights])
    non_trainable = _count_and_bytes([v.value for v in model.non_trainable_weights])
    optimizer = getattr(model, "optimizer", None)
    optimizer_state = None
    if optimizer is not None and getattr(optimizer, "iterations", 0):  # Keras counts it once it is built
        # Keras' optimizers also hold the step count and learning rate as two 4-byte variables.
        count, size = _count_and_bytes(optimizer.variables)
        optimizer_state = (count + 2, size + 8)
    total = [sum(parts) for parts in zip(trainable, non_trainable, optimizer_state or (0, 0))]
    for name, (count, size) in [("Total", total), ("Trainable", trainable), ("Non-trainable", non_trainable)] + \
            ([("Optimizer", optimizer_state)] if optimizer_state else []):
        lines.append(f" {name} params: {count:,} ({readable_memory_size(size)})")
    return "\n".join(lines) + "\n"


def print_summary(model, line_length=None, positions=None, print_fn=None, expand_nested=False, show_trainable=False,
                  layer_range=None):
    """Print the summary; a print_fn receives it whole, as one string (as in Keras 3)."""
    text = summary_text(model, line_length, positions, expand_nested, show_trainable, layer_range)
    if print_fn is None:
        print(text, end="")
    else:
        print_fn(text)
