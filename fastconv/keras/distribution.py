"""Keras 3's `keras.distribution` names for data-parallel training, on MPI ranks (one CPU "device"
per rank), over the same machinery as fastconv.keras.distributed.

    # mpiexec -n 4 python -m mpi4py train.py
    keras.distribution.initialize()          # optional: the first distributed call does it
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    model.fit(x, y, batch_size=256)          # 256 is the global batch: 64 samples per rank

Under a DataParallel distribution with more than one rank, fit, evaluate and predict split the data
by themselves: every rank gets the whole x and y, draws the same seeded permutation each epoch (rank
0's random state is sent to all ranks at the start of every epoch) and computes on its own slice of
each global batch; the gradients are averaged weighted by each slice's size (so an uneven last batch
counts each sample once, as on one process), the loss and metric sums are added over the ranks, so
every rank logs and returns the same numbers, and predict gathers every rank's outputs. BatchNormalization
uses the global batch's statistics. fit starts by giving every rank rank 0's weights and checking
that the ranks agree on the model and the data, failing with a message naming the rank that differs.
Progress bars, CSVLogger, ModelCheckpoint and model.save act on rank 0 only.
DataParallel(deterministic="ranks") makes the weights, bitwise, the same on any number of ranks
(fastconv.keras.microbatch); without it they are bitwise the same for a given number of ranks.
"""
import contextlib
import itertools
import time

import numpy as np

from fastconv.keras import backend, distributed, microbatch

_distribution = None


def initialize(job_addresses=None, num_processes=None, process_id=None):
    """Start MPI (every argument is optional: under mpiexec, MPI knows them). Given, num_processes
    and process_id are checked against MPI's size and rank; job_addresses is accepted for Keras'
    signature (MPI's launcher has already connected the processes). Calling it twice is fine."""
    distributed.init()
    if num_processes is not None and num_processes != distributed.size():
        raise ValueError(f"num_processes is {num_processes!r} but MPI started {distributed.size()} processes")
    if process_id is not None and process_id != distributed.rank():
        raise ValueError(f"process_id is {process_id!r} but this process is MPI rank {distributed.rank()}")


def list_devices(device_type=None):
    """One "cpu:RANK" device per MPI rank (each rank runs its threads on its share of a machine)."""
    if device_type is not None and str(device_type).lower() != "cpu":
        raise ValueError(f"device_type must be None or 'cpu' (fastconv runs on CPUs), got {device_type!r}")
    return [f"cpu:{rank}" for rank in range(distributed.size())]


class DeviceMesh:
    """Keras 3's `keras.distribution.DeviceMesh(shape, axis_names, devices=None)`. fastconv's data
    parallelism takes a one-axis mesh over every rank's device, e.g. DeviceMesh((4,), ["batch"])."""

    def __init__(self, shape, axis_names, devices=None):
        shape, axis_names = tuple(shape), list(axis_names)
        if len(shape) != len(axis_names):
            raise ValueError(f"shape {shape} and axis_names {axis_names} must have the same length")
        self.shape, self.axis_names = shape, axis_names
        self.devices = np.array(list_devices() if devices is None else list(devices), dtype=object).reshape(shape)

    def __repr__(self):
        return f"<DeviceMesh shape={self.shape} axis_names={self.axis_names}>"


class DataParallel:
    """Replicate the model on every rank and split each global batch across them (Keras 3's
    `keras.distribution.DataParallel`). `devices` (or a one-axis `device_mesh`) must be all ranks'
    devices, list_devices(): a subset would leave ranks out of the collectives."""

    def __init__(self, device_mesh=None, devices=None, auto_shard_dataset=True, deterministic=None):
        if deterministic not in (None, "ranks"):
            raise ValueError(f"deterministic must be None or 'ranks', got {deterministic!r}")
        all_devices = list_devices()
        if device_mesh is not None:
            if not isinstance(device_mesh, DeviceMesh) or len(device_mesh.shape) != 1:
                raise ValueError("device_mesh must be a one-axis keras.distribution.DeviceMesh over every rank's "
                                 f"device (fastconv's data parallelism spans all MPI ranks), got {device_mesh!r}")
            if devices is not None:
                raise ValueError("pass device_mesh or devices, not both")
            devices = list(device_mesh.devices)
        if devices is not None and list(devices) != all_devices:
            raise ValueError(f"devices must be every rank's device, {all_devices}, got {list(devices)!r}")
        if not auto_shard_dataset:
            raise ValueError("auto_shard_dataset=False is not supported: fit shards arrays, generators and "
                             "PyDatasets by slicing each global batch; give every rank the same data")
        self.devices = all_devices
        self.device_mesh = device_mesh or DeviceMesh((len(all_devices),), ["batch"], all_devices)
        self.batch_dim_name = self.device_mesh.axis_names[0]
        self.auto_shard_dataset = True
        # "ranks": the same weights, bitwise, for any number of ranks at the same global batch
        # (fastconv.keras.microbatch); None: bitwise the same for a given number of ranks
        self.deterministic = deterministic

    @property
    def num_processes(self):
        return distributed.size()

    @property
    def process_id(self):
        return distributed.rank()

    @contextlib.contextmanager
    def scope(self):
        """Make this the distribution within a `with` block."""
        global _distribution
        previous, _distribution = _distribution, self
        try:
            yield self
        finally:
            _distribution = previous

    def __repr__(self):
        return f"<DataParallel devices={self.devices}>"


def set_distribution(value):
    """Make `value` (a DataParallel, or None to train on this process alone) the global distribution."""
    global _distribution
    if value is not None and not isinstance(value, DataParallel):
        raise TypeError(f"set_distribution takes a keras.distribution.DataParallel or None, got {type(value).__name__}")
    _distribution = value


def distribution():
    """The distribution set by set_distribution (or a scope), else None."""
    return _distribution


# ----- what the trainer calls -----

def active():
    """The distribution fit and evaluate split their data for: set, and over more than one rank."""
    if _distribution is None or distributed.size() == 1:
        return None
    return _distribution


def deterministic_ranks():
    """Whether the distribution set asks for weights independent of the number of ranks (then fit and
    evaluate run through sharded() even on one rank)."""
    return _distribution is not None and _distribution.deterministic == "ranks"


def is_chief():
    """False on the ranks other than 0 of an active distribution: they print, log and save nothing."""
    return _distribution is None or distributed.is_chief()


def _shard(batch_size, ranks, rank):
    if deterministic_ranks():  # whole leaves: one node of the micro-batch tree per rank
        return microbatch.shard(batch_size, ranks, rank)
    return slice(batch_size * rank // ranks, batch_size * (rank + 1) // ranks)


def _source_size(data):
    source = getattr(data, "source", None)
    return getattr(source, "count", None), getattr(source, "batch_size", None)


@contextlib.contextmanager
def fit_scope(trainer, train_data):
    """Around a fit under an active distribution: check that the ranks agree, start them from rank
    0's weights, and make the optimizer reduce gradients across the ranks for the duration."""
    model, optimizer = trainer.model, trainer.optimizer
    # shapes, not names: layer names count up per process, and a rank may have built another model
    distributed.agree([(tuple(w.shape), w.dtype.str) for w in model.weights], "the model's weights (shape, dtype)")
    distributed.agree((type(optimizer).__name__, optimizer.get_config()), "the optimizer (class, config)")
    distributed.agree((train_data.num_batches,) + _source_size(train_data),
                      "the training data (batches per epoch, samples, batch size)")
    distributed.broadcast_model(model, 0)
    if deterministic_ranks():  # the training step adds the gradients across ranks in the leaf tree
        if distributed.is_distributed(optimizer):
            raise ValueError("deterministic='ranks' reduces the gradients itself: compile with a plain "
                             "optimizer, not a DistributedOptimizer")
        yield
        return
    installed = not distributed.is_distributed(optimizer)
    if installed:
        distributed.make_distributed(optimizer)
    try:
        yield
    finally:
        if installed:
            distributed.make_local(optimizer)


def _sync_random_state():
    """Every rank takes rank 0's generator, so that they draw the same permutation of the data."""
    state = distributed.broadcast_object(backend.rng().bit_generator.state, 0)
    backend.rng().bit_generator.state = state


def _split_random_state():
    """After the epoch's permutation, give each rank a stream of its own for the epoch (dropout masks
    must differ between ranks), derived from the shared generator without advancing it; return that
    generator, which the ranks go back to at the epoch's end. So the shared stream only draws the
    data's order (the data source keeps drawing from it, e.g. for shuffle="batch"), as on one process
    without dropout, and a seeded run repeats."""
    shared = backend.rng()
    probe = np.random.default_rng()
    probe.bit_generator.state = shared.bit_generator.state
    backend.seed(np.random.SeedSequence([int(probe.integers(0, 2**63)), distributed.rank()]))
    return shared


def _step_random_state(shared, index):
    """For deterministic="ranks": the same generator on every rank for step `index`, derived from the
    shared one (`shared`, or the current one at the first step, which it returns) without advancing it."""
    shared = shared or backend.rng()
    probe = np.random.default_rng()
    probe.bit_generator.state = shared.bit_generator.state
    backend.seed(np.random.SeedSequence([int(probe.integers(0, 2**63)), index]))
    return shared


def _restore_random_state(shared):
    backend._rng = shared


def _combine(gathered):
    """The ranks' step logs, in rank order: (total, count) pairs added, plain values (from a model's
    own train_step) averaged weighted by the ranks' sample counts."""
    combined, plain = {}, {}
    for count, stats in gathered:
        for name, value in stats.items():
            if isinstance(value, tuple):
                total, weight = combined.get(name, (0.0, 0))
                combined[name] = (total + value[0], weight + value[1])
            elif count:
                total, weight = plain.get(name, (0.0, 0))
                plain[name] = (total + float(value) * count, weight + count)
    combined.update({name: total / weight for name, (total, weight) in plain.items()})
    return combined


def any_rank(flag):
    """Whether `flag` is true on any rank (e.g. model.stop_training), the same answer on all."""
    return any(distributed.allgather_object(bool(flag)))


class LocalBatch(tuple):
    """A batch of which an array source gathered this rank's rows only; global_size is the whole
    batch's sample count."""

    def __new__(cls, batch, global_size):
        instance = super().__new__(cls, batch)
        instance.global_size = global_size
        return instance


_reading_shard = False  # set while sharded() draws a batch, so predict and plain loops are unaffected


def local_rows(index, size):
    """For an array source: this rank's rows of a global batch `index` (a slice, or an index array, of
    `size` samples) while sharded() reads it, so only they are gathered and converted; else None."""
    if not _reading_shard:
        return None
    part = _shard(size, distributed.size(), distributed.rank())
    if isinstance(index, slice):
        return slice(index.start + part.start, index.start + part.stop)
    return index[part]


def _next_global_batch(iterator):
    global _reading_shard
    _reading_shard = True
    try:
        return next(iterator, None)
    finally:
        _reading_shard = False


def _same_batch(have, index):
    """Whether every rank has global batch `index` (False: every rank's data has ended); an error
    when only some ranks have it, or when its size differs: a rank whose data ends first would leave
    the others waiting in the next collective."""
    if None in have:
        if any(size is not None for size in have):
            raise ValueError(f"the ranks' data ran out at different steps: at batch {index + 1}, rank "
                             f"{have.index(None)} has no data left and rank "
                             f"{next(r for r, size in enumerate(have) if size is not None)} has; "
                             "give every rank the same data")
        return False
    if len(set(have)) > 1:
        raise ValueError(f"the ranks' global batch {index + 1} differs in size: {have} samples on ranks "
                         f"0 to {len(have) - 1}; give every rank the same data")
    return True


def sharded_predict(batches, forward):
    """predict under an active distribution: each rank runs `forward` on its rows of every batch, and
    the outputs are gathered in rank order (which is the batch's order), so every rank returns all."""
    ranks, rank = distributed.size(), distributed.rank()

    def local_batches():
        iterator = iter(batches)
        for index in itertools.count():
            batch = _next_global_batch(iterator)
            size = None if batch is None else getattr(batch, "global_size", None) or len(batch[0][0])
            if not _same_batch(distributed.allgather_object(size), index):
                return
            xs = batch[0] if isinstance(batch, LocalBatch) else [x[_shard(size, ranks, rank)] for x in batch[0]]
            yield xs, None, None

    def gathered(xs):
        parts = distributed.allgather_object(forward(xs) if len(xs[0]) else None)
        present = [part for part in parts if part is not None]
        return [np.concatenate([part[j] for part in present]) for j in range(len(present[0]))]

    return local_batches(), gathered


def sharded(trainer, batches, step_function, batch_end, training):
    """This rank's part of an epoch: each global batch sliced to this rank's rows, a step function
    returning the logs reduced over all ranks, and batch_end hooks whose model.stop_training the
    ranks agree on (a callback may stop one rank only, e.g. on its own Ctrl-C).

    Before each batch the ranks exchange one small message: the size of their global batch (or that
    their data has ended) and whether a callback asked to stop after the previous batch. So the data
    is checked, the weights of the ranks' gradients are known to all, and a stop takes effect on
    every rank at the same batch, without a message of its own."""
    ranks, rank = distributed.size(), distributed.rank()
    model = trainer.model
    state = {"stop": False, "finished": False, "weights": None}
    in_leaves = deterministic_ranks()  # the steps' sums, and in training the gradients, by leaves
    by_leaves = training and in_leaves
    if by_leaves:
        microbatch.check_model(model)
        if trainer._overridden("train_step"):
            raise ValueError("deterministic='ranks' needs the built-in train_step: a model's own train_step "
                             "cannot reduce its gradients by micro-batches")

    def local_batches():
        _sync_random_state()
        shared = None
        iterator = iter(batches)
        try:
            for index in itertools.count():
                batch = _next_global_batch(iterator)
                size = None if batch is None else getattr(batch, "global_size", None) or len(batch[0][0])
                exchanged = distributed.allgather_object((size, state["stop"]))
                have = [size for size, _ in exchanged]
                if any(stop for _, stop in exchanged):
                    model.stop_training = True
                    return
                if not _same_batch(have, index):
                    return
                if by_leaves:  # every rank draws the same values for the global batch: a stream per step
                    shared = _step_random_state(shared, index)
                elif shared is None:
                    shared = _split_random_state()
                state["weights"] = [_shard(size, ranks, r).stop - _shard(size, ranks, r).start for r in range(ranks)]
                if isinstance(batch, LocalBatch):  # only this rank's rows were read
                    yield tuple(batch)
                    continue
                xs, ys, weights = batch
                part = _shard(size, ranks, rank)
                yield ([x[part] for x in xs], None if ys is None else [y[part] for y in ys],
                       None if weights is None else weights[part])
        finally:
            state["finished"] = True
            if shared is not None:
                _restore_random_state(shared)

    def step(xs, ys, weights):
        count = len(xs[0])
        started = time.perf_counter()
        counts = state["weights"]
        leaves = microbatch.window(sum(counts[:rank]), count, sum(counts), present=None if ranks == 1 else
                                   [c > 0 for c in counts]) if in_leaves else contextlib.nullcontext()
        with distributed.step_weights(counts), leaves:
            if count:
                stats = step_function(xs, ys, weights)
            else:
                stats = {}
                if by_leaves:
                    microbatch.join_empty_step(model, trainer.optimizer, _synchronised_norms(model))
                elif training:  # an empty slice still joins the reductions, with weight 0
                    _join_empty_step(model)
                    variables = model.trainable_weights
                    trainer.optimizer.apply([None] * len(variables), variables)
        logs = (microbatch.combine_logs if in_leaves else _combine)(distributed.allgather_object((count, stats)))
        if training:
            distributed._timings["steps"] += 1
            distributed._timings["step_seconds"] += time.perf_counter() - started
        return logs

    def agreed_batch_end(step_index, logs):
        batch_end(step_index, logs)
        if state["finished"]:  # after the last batch: every rank is here, so agree at once
            model.stop_training = any_rank(model.stop_training)
        elif model.stop_training:  # carried to the other ranks with the next batch's sizes
            state["stop"], model.stop_training = True, False

    return local_batches(), step, None if batch_end is None else agreed_batch_end


# ----- synchronised batch normalization -----
# Under an active distribution a BatchNormalization in training normalises with the statistics of the
# whole global batch, as one process would: one reduction of the per-channel sums in the forward pass
# and one of the gradient sums in the backward pass, both in rank order.

def _channel_sums(array):
    flat = array.reshape(-1, array.shape[-1])
    return flat.sum(axis=0, dtype=np.float64), np.einsum("ij,ij->j", flat, flat, dtype=np.float64)


def _global_statistics(layer, inputs):
    """The global batch's per-channel mean and (biased, as the kernel's) variance, from every rank's
    sums (`inputs` None: this rank has no samples); the moving statistics are updated with them."""
    channels = layer.moving_mean.shape[0]
    if inputs is not None and inputs.size:
        total, squares = _channel_sums(inputs)
        elements = inputs.size // channels
    else:
        total = squares = np.zeros(channels)
        elements = 0
    sums = distributed._rank_ordered_sum(np.concatenate([total, squares, [float(elements)]]))
    count = sums[-1]
    mean = sums[:channels] / count
    variance = np.maximum(sums[channels:2 * channels] / count - mean * mean, 0.0)
    dtype = layer.moving_mean.dtype
    mean, variance = mean.astype(dtype), variance.astype(dtype)
    layer.moving_mean.value *= layer.momentum
    layer.moving_mean.value += (1 - layer.momentum) * mean
    layer.moving_variance.value *= layer.momentum
    layer.moving_variance.value += (1 - layer.momentum) * variance
    return mean, variance, count


def sync_batch_norm_forward(layer, inputs):
    """The forward pass of `layer` (a BatchNormalization in training) over the global batch."""
    mean, variance, count = _global_statistics(layer, inputs)
    mean, variance = mean.astype(inputs.dtype), variance.astype(inputs.dtype)
    out, _, _ = backend.ops_for(inputs).batch_norm(inputs, layer._value(layer.gamma), layer._value(layer.beta),
                                                   epsilon=layer.epsilon, mean=mean, variance=variance)
    return out, (inputs, mean, variance, "global", count)


def sync_batch_norm_backward(layer, ctx, grad, need_input_grad):
    """The backward pass matching sync_batch_norm_forward. This rank's loss gradient is scaled for
    its own n samples (the trainer weighs the ranks by n afterwards), so the global sums of dy and
    dy * xhat are taken over n_r-weighted contributions and brought back to this rank's scale."""
    inputs, mean, variance, _, count = ctx
    samples = len(inputs)
    dx, dgamma, dbeta = backend.ops_for(grad).batch_norm_backward(
        grad, inputs, mean, variance, layer._value(layer.gamma), epsilon=layer.epsilon,
        batch_statistics=False, need_dx=need_input_grad)
    if layer.gamma is not None:
        layer.gamma.add_grad(dgamma)
    if layer.beta is not None:
        layer.beta.add_grad(dbeta)
    sums = distributed._rank_ordered_sum(np.concatenate([dbeta, dgamma]).astype(np.float64) * samples)
    if not need_input_grad:
        return None
    channels = inputs.shape[-1]
    inv_std = 1.0 / np.sqrt(variance.astype(np.float64) + layer.epsilon)
    scale = inv_std if layer.gamma is None else inv_std * layer.gamma.value
    scale = scale / (samples * count)
    normalized = (inputs - mean) * inv_std.astype(inputs.dtype)
    dx -= (scale * sums[:channels]).astype(dx.dtype)
    dx -= normalized * (scale * sums[channels:]).astype(dx.dtype)
    return dx


def _synchronised_norms(model):
    """The BatchNormalization layers that reduce across ranks in a training step, in forward order."""
    from fastconv.keras.layers.normalization import BatchNormalization
    found = []

    def walk(layer):
        for inner in getattr(layer, "layers", ()):
            walk(inner)
        if isinstance(layer, BatchNormalization) and layer.trainable:
            found.append(layer)
    for layer in model.layers:
        walk(layer)
    return found


def _join_empty_step(model):
    """A rank without samples in a global batch joins the batch-norm reductions with zeros."""
    norms = _synchronised_norms(model)
    for layer in norms:
        _global_statistics(layer, None)
    for layer in reversed(norms):
        distributed._rank_ordered_sum(np.zeros(2 * layer.moving_mean.shape[0]))
