"""Training whose weights do not depend on how many ranks share the batch: deterministic="ranks".

A training step cuts its (global) batch into micro-batches, the "leaves", of `leaf` samples each (the
last one may be shorter). Every sum over the batch's samples, the weight and bias gradients of Conv2D,
Conv2DTranspose and Dense and the batch-norm statistics and gradient sums, is computed leaf by leaf by
the same kernel call, and the leaves' results are added in one fixed binary tree: the sum over leaves
[a, b) is that over [a, m) plus that over [m, b), m = (a + b + 1) // 2, in float32 for gradients as
the kernels give them. A DataParallel fit hands each rank one node of that tree (`shard`), whole
leaves, and the ranks' subtree sums are added by the top of the same tree (`tree_allreduce`), so the
gradients, and the weights after any number of steps, are bitwise the same on 1, 2, 4, ... ranks at
the same global batch. The loss gradient is scaled by 1 / global batch on every rank (`global_count`),
and random layers draw for the global batch and keep their rows (`first_sample`).

What is computed per sample (forward passes, input gradients, dropout masks) needs nothing: the
kernels give each sample the same bits whatever the batch it comes in (tests/test_microbatch.py
checks it for every conv algorithm, the GEMM, pooling and batch norm).
"""
import contextlib

import numpy as np

LEAF = 8  # samples per leaf: a global batch of 64 splits into whole subtrees down to 8 ranks

_step = None  # the running step's _Window while a ranks-deterministic step runs


class _Window:
    """This rank's part of a global batch: samples [start, start + count) of global_count, cut in
    leaves of `leaf`; present[r] says whether rank r holds any sample (ranks None: one process)."""

    def __init__(self, leaf, start, count, global_count, present):
        self.leaf, self.start, self.count, self.global_count, self.present = leaf, start, count, global_count, present


def active():
    """Whether a ranks-deterministic training step is running (layers then reduce by leaves)."""
    return _step is not None


def global_count():
    """The global batch's sample count in a ranks-deterministic step, else None."""
    return None if _step is None else _step.global_count


def first_sample():
    """This rank's first sample's index in the global batch (0 outside a ranks-deterministic step)."""
    return 0 if _step is None else _step.start


@contextlib.contextmanager
def window(start, count, global_count, leaf=LEAF, present=None):
    """Within this block layers reduce over leaves: this rank holds samples [start, start + count)
    of a global batch of global_count (start on a leaf boundary); present as in _Window."""
    global _step
    if start % leaf and count:
        raise ValueError(f"a rank's samples must start on a leaf boundary, got sample {start} with leaves of {leaf}")
    previous, _step = _step, _Window(leaf, start, count, global_count, present)
    try:
        yield _step
    finally:
        _step = previous


def leaves(count, leaf):
    """The leaves of a batch of `count` samples, as slices."""
    return [slice(i, min(i + leaf, count)) for i in range(0, count, leaf)]


def _add(left, right):
    if isinstance(left, tuple):
        return tuple(_add(a, b) for a, b in zip(left, right))
    if left is None:
        return right
    if right is None:
        return left
    np.add(left, right, out=left)  # left is this tree's own partial sum
    return left


def tree(values, combine=_add):
    """values[0] + values[1] + ... added in the fixed tree (see the module's docstring); a None value
    is an empty node, which passes the other side through. combine(left, right) may reuse left."""
    return _lazy_tree(len(values), values.__getitem__, combine) if len(values) else None


def _lazy_tree(count, value, combine):
    """The tree of value(0), ..., value(count - 1), computed depth first, left to right: at most one
    partial sum per level is alive, so a leaf's result is added while still in cache."""
    def node(a, b):
        if b - a == 1:
            return value(a)
        middle = (a + b + 1) // 2
        left, right = node(a, middle), node(middle, b)
        if left is None:
            return right
        if right is None:
            return left
        return combine(left, right)
    return node(0, count)


def leaf_sum(compute, count, rows_per_sample=1, combine=_add):
    """The tree of compute(rows) over the leaves of this step's `count` samples (rows: a leaf's slice
    of rows, rows_per_sample rows each); compute gives fresh arrays (or tuples of them)."""
    parts = leaves(count, _step.leaf)
    return _lazy_tree(len(parts), lambda i: compute(slice(parts[i].start * rows_per_sample,
                                                          parts[i].stop * rows_per_sample)), combine)


def _plus(left, right):
    return left + right


def sample_sum(values):
    """The sum of `values` (one row per sample of this step's) in float64: each leaf's sum, added in
    the tree, so that the loss and metric sums, too, are those of one process."""
    rows = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return tree([float(rows[s].sum()) for s in leaves(len(rows), _step.leaf)], _plus) or 0.0


def combine_logs(gathered):
    """Every rank's step statistics ((count, {name: (total, weight)}) in rank order) added in the
    top of the tree, a rank without samples left out."""
    combined = {}
    for name in dict.fromkeys(name for _, stats in gathered for name in stats):
        parts = [stats.get(name) if count else None for count, stats in gathered]
        combined[name] = tuple(tree([None if part is None else part[i] for part in parts], _plus) for i in (0, 1))
    return combined


def by_leaves(backward):
    """backward(dy, x, *args, **kwargs) -> (dx, *sums), run leaf by leaf on this step's samples: the
    dx concatenated (None stays None), each sum added in the tree."""
    def run(dy, x, *args, **kwargs):
        parts, dxs = leaves(len(x), _step.leaf), []

        def leaf(i):
            dx, *sums = backward(dy[parts[i]], x[parts[i]], *args, **kwargs)
            dxs.append(dx)  # depth first visits the leaves in order
            return tuple(sums)
        sums = _lazy_tree(len(parts), leaf, _add)
        return (None if dxs[0] is None else np.concatenate(dxs),) + sums
    return run


def batch_draw(draw, count):
    """draw(n) (random values for n samples) for this rank's `count` samples: in a ranks-deterministic
    step drawn for the whole global batch, of which this rank keeps its own rows, so that a sample
    gets the same draw whichever rank holds it."""
    if _step is None:
        return draw(count)
    return draw(_step.global_count)[_step.start:_step.start + count]


class BatchRows:
    """A generator's per-sample draws (uniform with size n or (n, ...)) made for the global batch, of
    which this rank keeps its rows (batch_draw)."""

    def __init__(self, rng):
        self.rng = rng

    def uniform(self, low=0.0, high=1.0, size=None):
        shape = (size,) if np.isscalar(size) else tuple(size)
        return batch_draw(lambda n: self.rng.uniform(low, high, (n,) + shape[1:]), shape[0])


def shard(count, ranks, rank, leaf=LEAF):
    """Rank `rank`'s samples of a global batch of `count`, as a slice: the ranks split the leaf tree
    at its nodes, rank halves with leaf halves ([p, q) at (p + q + 1) // 2, as tree() splits a list),
    so each rank holds one node (whole leaves; none when there are fewer leaves than ranks)."""
    if not 0 <= rank < ranks:
        raise ValueError(f"rank must be in [0, {ranks}), got {rank!r}")
    first, last, low, high = 0, -(-count // leaf), 0, ranks
    while high - low > 1:
        middle, split = (first + last + 1) // 2, (low + high + 1) // 2
        if rank < split:
            last, high = middle, split
        else:
            first, low = middle, split
    return slice(min(first * leaf, count), min(last * leaf, count))


# ----- across ranks -----

def tree_allreduce(flat, present):
    """The sum over the ranks of each rank's 1-D float array `flat` (the same size everywhere), added
    in the top of the leaf tree (tree() over the ranks, a rank with present[r] false left out), in
    flat's dtype: the same bits on every rank, and those of one process's tree over all leaves.

    The exchange is distributed's (point-to-point reduce-scatter, then allgather); only the adding
    differs. One process: flat itself."""
    from fastconv.keras import distributed
    comm = distributed._world()
    if comm.Get_size() == 1:
        return flat

    def add_in_tree(rows, out):  # tree() adds into its left operands: copies, not flat's own segment
        out[...] = tree([row.copy() if present[r] else None for r, row in enumerate(rows)])

    return distributed._OrderedSum(comm, flat, combine=add_in_tree).wait()


def gather_tree(value, combine=_add):
    """The tree of every rank's small array `value` (None: the rank has no samples) with combine, the
    same bits on every rank; one process: value itself."""
    if _step is None or _step.present is None:
        return value
    from fastconv.keras import distributed
    return tree(distributed.allgather_object(value), combine)


def reduce_gradients(variables):
    """Add every rank's gradients of `variables` (their .grad, this rank's subtree sums) across the
    ranks in the leaf tree's order, in place; on one process nothing to do."""
    if _step is None or _step.present is None:
        return
    variables = list(variables)
    dtype = np.result_type(*[v.dtype for v in variables]) if variables else np.dtype(np.float32)
    sizes = [v.size for v in variables]
    flat = np.zeros(sum(sizes) + len(variables), dtype)  # then one flag per variable: it has a gradient
    offset, total = 0, sum(sizes)
    for index, (variable, size) in enumerate(zip(variables, sizes)):
        if variable.grad is not None:
            flat[offset:offset + size] = np.reshape(variable.grad, -1)
            flat[total + index] = 1
        offset += size
    summed = tree_allreduce(flat, _step.present)
    offset = 0
    for index, (variable, size) in enumerate(zip(variables, sizes)):
        variable.grad = summed[offset:offset + size].reshape(variable.shape) if summed[total + index] else None
        offset += size


# ----- the layers' reductions -----

def check_model(model):
    """A ValueError naming the first layer whose gradients deterministic="ranks" cannot reduce by
    leaves (weights outside Conv2D, Conv2DTranspose, Dense and BatchNormalization)."""
    from fastconv.keras.layers import BatchNormalization, Conv2D, Dense
    for layer in _leaf_layers(model):
        if layer.trainable_weights and not isinstance(layer, (Conv2D, Dense, BatchNormalization)):
            raise ValueError(f"deterministic='ranks' reduces the gradients of Conv2D, Conv2DTranspose, Dense and "
                             f"BatchNormalization layers only; layer {layer.name!r} ({type(layer).__name__}) has "
                             "trainable weights")


def _leaf_layers(layer):
    inner = getattr(layer, "layers", None)
    if not inner:
        yield layer
        return
    for child in inner:
        yield from _leaf_layers(child)


def _chan(left, right):
    """Two (count, mean, M2) statistics, rows of a (3, channels) float64 array, as one (Chan et al.)."""
    count = left[0] + right[0]
    delta = right[1] - left[1]
    mean = left[1] + delta * (right[0] / count)
    return np.stack([count, mean, left[2] + right[2] + delta * delta * (left[0] * right[0] / count)])


def batch_norm_forward(layer, ops, inputs):
    """A BatchNormalization's training forward pass with the global batch's statistics, from each
    leaf's (count, mean, M2) combined in the tree; the moving statistics are updated with them."""
    channels = inputs.shape[-1]

    def statistics(rows):
        part = inputs[rows]
        mean, variance = ops.batch_norm_statistics(part)
        count = np.full(channels, part.size // channels, np.float64)
        return np.stack([count, mean.astype(np.float64), variance.astype(np.float64) * count])

    mean, variance, count = _global_statistics(layer, leaf_sum(statistics, len(inputs), combine=_chan))
    mean, variance = mean.astype(inputs.dtype), variance.astype(inputs.dtype)
    out, _, _ = ops.batch_norm(inputs, layer._value(layer.gamma), layer._value(layer.beta), epsilon=layer.epsilon,
                               mean=mean, variance=variance)
    return out, BatchNormLeaves(inputs, mean, variance, count)


def _global_statistics(layer, local):
    """The global batch's mean, (biased) variance and row count from each rank's subtree statistics
    `local` (None: no samples on this rank); the layer's moving statistics are updated with them."""
    total = gather_tree(local, _chan)
    dtype = layer.moving_mean.dtype
    mean, variance = total[1].astype(dtype), (total[2] / total[0]).astype(dtype)
    layer.moving_mean.value *= layer.momentum
    layer.moving_mean.value += (1 - layer.momentum) * mean
    layer.moving_variance.value *= layer.momentum
    layer.moving_variance.value += (1 - layer.momentum) * variance
    return mean, variance, float(total[0][0])


def join_empty_step(model, optimizer, norms):
    """A training step on a rank without samples: it joins the batch-norm reductions (`norms`, the
    model's batch-statistics layers in forward order) and the gradients' with nothing, then takes the
    same optimizer step as the others."""
    for layer in norms:
        _global_statistics(layer, None)
    for layer in reversed(norms):
        gather_tree(None)
    variables = model.trainable_weights
    for variable in variables:
        variable.grad = None
    reduce_gradients(variables)
    for variable in variables:
        if variable.regularizer is not None:
            variable.add_grad(variable.regularizer.gradient(variable.value))
    optimizer.apply([variable.grad for variable in variables], variables)
    for variable in variables:
        variable.grad = None


class BatchNormLeaves:
    """What the backward pass of batch_norm_forward needs (count: the global batch's rows)."""

    def __init__(self, inputs, mean, variance, count):
        self.inputs, self.mean, self.variance, self.count = inputs, mean, variance, count


def batch_norm_backward(layer, ops, ctx, grad, need_input_grad):
    """The backward pass matching batch_norm_forward: dbeta = sum(dy) and dgamma = sum(dy * xhat)
    per leaf, in the tree (this rank's subtree is its gradient; all ranks' tree gives the global sums
    the input gradient needs), dx = gamma / std * (dy - dbeta / n - xhat * dgamma / n)."""
    inputs, mean, variance = ctx.inputs, ctx.mean, ctx.variance
    gamma = layer._value(layer.gamma)

    def sums(rows):
        dx, dgamma, dbeta = ops.batch_norm_backward(grad[rows], inputs[rows], mean, variance, gamma,
                                                    epsilon=layer.epsilon, batch_statistics=False,
                                                    need_dx=need_input_grad)
        return dx, np.concatenate([dbeta, dgamma])

    parts = [sums(slice(s.start, s.stop)) for s in leaves(len(inputs), _step.leaf)] if len(inputs) else []
    local = tree([part[1] for part in parts])
    channels = layer.moving_mean.shape[0]
    if local is not None:
        if layer.beta is not None:
            layer.beta.add_grad(local[:channels].copy())
        if layer.gamma is not None:
            layer.gamma.add_grad(local[channels:].copy())
    total = gather_tree(None if local is None else local.copy())
    if not need_input_grad or not parts:
        return None
    dx = np.concatenate([part[0] for part in parts])  # dy * gamma / std
    inv_std = 1.0 / np.sqrt(variance.astype(np.float64) + layer.epsilon)
    scale = inv_std if gamma is None else inv_std * gamma
    total = total.astype(np.float64) / ctx.count
    shift = (scale * total[:channels]).astype(dx.dtype)
    slope = (-scale * inv_std * total[channels:]).astype(dx.dtype)
    correction = inputs - mean
    correction *= slope
    correction -= shift
    dx += correction
    return dx
