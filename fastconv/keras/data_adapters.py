"""What fit, evaluate and predict accept as data, turned into batches of (inputs, targets, weights).

Three kinds of source, as in Keras 3:
- NumPy arrays (one, a list, or a dict keyed by the model's Input / output layer names): sliced per
  batch and cast per batch, so a uint8 dataset stays uint8 in memory;
- Python generators and iterators yielding (x,), (x, y) or (x, y, sample_weight): read once;
- `keras.utils.PyDataset` (Keras 2's `Sequence`): `__getitem__` runs in background threads ahead
  of the training step, so Python input work overlaps the C kernels (which release the GIL).

`EpochIterator` gives Keras 3's step semantics (steps_per_epoch, validation_steps, steps): with a
step count, an epoch takes that many batches and the next epoch continues where it stopped; without
one, an epoch is one pass over the data.
"""
import collections
import concurrent.futures
import itertools
import math
import numbers
import warnings

import numpy as np

from fastconv.keras import backend, config, distribution
from fastconv.keras import trainer as _trainer
from fastconv.keras.compile_utils import input_names, list_by_name, output_names

_GENERATOR_PREFETCH = 2  # batches a generator is read ahead of the step using them
_END = object()  # a one-pass source has no more batches


class PyDataset:
    """Base class of a dataset that hands out whole batches by index (Keras 3's `keras.utils.PyDataset`).

    Implement `__len__` (the number of batches) and `__getitem__(index)` returning `(x,)`, `(x, y)` or
    `(x, y, sample_weight)`; for an endless dataset, define the `num_batches` property to return None
    instead of `__len__` (fit then needs steps_per_epoch). `on_epoch_begin` / `on_epoch_end` run
    around every epoch. fit reads the next `max_queue_size` batches ahead in `workers` threads;
    `use_multiprocessing=True` is accepted and also runs threads (the kernels release the GIL, and no
    pickling is needed).
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    def _setting(self, name, default):
        if not hasattr(self, name):
            warnings.warn("Your `PyDataset` class should call `super().__init__(**kwargs)` in its constructor; "
                          "`**kwargs` can include `workers`, `use_multiprocessing`, `max_queue_size`.", stacklevel=3)
            setattr(self, name, default)
        return getattr(self, name)

    @property
    def workers(self):
        return self._setting("_workers", 1)

    @workers.setter
    def workers(self, value):
        self._workers = value

    @property
    def use_multiprocessing(self):
        return self._setting("_use_multiprocessing", False)

    @use_multiprocessing.setter
    def use_multiprocessing(self, value):
        self._use_multiprocessing = value

    @property
    def max_queue_size(self):
        return self._setting("_max_queue_size", 10)

    @max_queue_size.setter
    def max_queue_size(self, value):
        self._max_queue_size = value

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index) returning one batch")

    @property
    def num_batches(self):
        """The number of batches (len(self)), or None for an endless dataset."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(f"{type(self).__name__} must implement __len__ (or a num_batches property "
                                  "returning None for an endless dataset)")

    def __iter__(self):
        count = self.num_batches
        for index in itertools.count() if count is None else range(count):
            yield self[index]

    def on_epoch_begin(self):
        """Called at the start of every epoch."""

    def on_epoch_end(self):
        """Called at the end of every epoch (e.g. to reshuffle)."""


def unpack_x_y_sample_weight(data):
    """(x, y, sample_weight) from a batch given as x, (x,), (x, y) or (x, y, sample_weight); None where absent."""
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return data, None, None
    if 1 <= len(data) <= 3:
        return tuple(data) + (None,) * (3 - len(data))
    raise ValueError(f"a batch must be x, (x,), (x, y) or (x, y, sample_weight), got a tuple of {len(data)} items")


def pack_x_y_sample_weight(x, y=None, sample_weight=None):
    """The tuple fit takes from a generator: x alone (or (x,) for a list/tuple x), (x, y) or (x, y, sample_weight)."""
    if y is None:
        return (x,) if isinstance(x, (list, tuple)) else x
    return (x, y) if sample_weight is None else (x, y, sample_weight)


def _check_steps(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def _is_iterator(data):
    return hasattr(data, "__next__") and hasattr(data, "__iter__") and not isinstance(data, np.ndarray)


def _is_endless(iterator):
    """True for the iterators known never to end (itertools.count, cycle, repeat without times)."""
    if isinstance(iterator, (itertools.count, itertools.cycle)):
        return True
    if isinstance(iterator, itertools.repeat):
        try:
            iterator.__length_hint__()  # an endless repeat has no length
        except TypeError:
            return True
    return False


def is_dataset(data):
    """Whether fit takes `data` as a stream of batches (generator, iterator or PyDataset) rather than arrays."""
    return isinstance(data, PyDataset) or _is_iterator(data)


# ----- one batch from a generator or PyDataset, in the model's terms -----

def _by_input_names(model, x):
    if isinstance(x, dict):
        if not model.built:
            raise ValueError("x given as a dict needs the model's input names: give the model an Input first")
        return list_by_name(x, input_names(model), "x")
    return x


def _by_output_names(model, y):
    if isinstance(y, dict):
        return list_by_name(y, output_names(model), "y")
    return y


def _model_inputs(model, x, what):
    """x (arrays, a list of them, or a dict by Input name) as the model's list of inputs, checked
    against it; a Sequential without an input shape is built for them."""
    xs = _trainer._arrays(_by_input_names(model, x), len(model.inputs) if model.built else 1, what)
    model.prepare_inputs(xs)
    _trainer._check_lengths(xs, None)
    return xs


class _BatchConverter:
    """Turns a raw batch into (inputs cast to floatx, targets, per-sample weights) for one model.
    `needs_targets` is False for predict, which uses only x."""

    def __init__(self, model, trainer, needs_targets, class_weight=None):
        self.model, self.trainer = model, trainer
        self.needs_targets, self.class_weight = needs_targets, class_weight

    def __call__(self, batch):
        if not isinstance(batch, (tuple, list, dict, np.ndarray)):
            raise ValueError("a generator or PyDataset must give batches as tuples (x,), (x, y) or "
                             f"(x, y, sample_weight), got a {type(batch).__name__}")
        x, y, sample_weight = unpack_x_y_sample_weight(batch)
        model = self.model
        if not self.needs_targets:
            return _trainer._inputs_batch(_model_inputs(model, x, "x"), slice(None)), None, None
        if y is None:
            raise ValueError("fit and evaluate need targets: each batch must be (x, y) or (x, y, sample_weight), "
                             "got a batch without y")
        xs, ys = self.trainer._standardize(_by_input_names(model, x), _by_output_names(model, y))
        weights = _trainer._sample_weights(sample_weight, self.class_weight, ys, len(xs[0]))
        return _trainer._inputs_batch(xs, slice(None)), ys, weights


# ----- sources -----

class _Prefetcher:
    """Runs the calls of a stream in worker threads, up to `depth` ahead of the consumer, and yields
    their results in order. A call returning _END ends the stream; an exception in a call is raised
    in the consumer."""

    def __init__(self, workers, depth):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="fastconv-data")
        self.depth = depth

    def stream(self, calls):
        pending = collections.deque()
        try:
            for call in itertools.islice(calls, self.depth):
                pending.append(self._executor.submit(call))
            while pending:
                result = pending.popleft().result()
                call = next(calls, None)
                if call is not None:
                    pending.append(self._executor.submit(call))
                if result is _END:
                    return
                yield result
        finally:
            for future in pending:
                future.cancel()

    def close(self):
        self._executor.shutdown(wait=False, cancel_futures=True)


class ArraySource:
    """Arrays already in the model's order, checked; batches are sliced (or gathered when shuffled)."""
    one_pass = False

    def __init__(self, xs, ys, weights, batch_size, shuffle):
        self.xs, self.ys, self.weights, self.shuffle = xs, ys, weights, shuffle
        self.count = len(xs[0])
        self.batch_size = batch_size
        self.num_batches = -(-self.count // batch_size)

    def iterate(self):
        count, size, rng = self.count, self.batch_size, backend.rng()
        # Keras' shuffle="batch" keeps each batch's samples and only reorders them inside it.
        order = rng.permutation(count) if self.shuffle and self.shuffle != "batch" else None
        for start in range(0, count, size):
            stop = min(start + size, count)
            if self.shuffle == "batch":
                index = start + rng.permutation(stop - start)
            else:
                index = slice(start, stop) if order is None else order[start:stop]
            local = distribution.local_rows(index, stop - start)  # in a DataParallel fit: this rank's rows
            rows = index if local is None else local
            batch = (_trainer._inputs_batch(self.xs, rows), None if self.ys is None else [y[rows] for y in self.ys],
                     None if self.weights is None else self.weights[rows])
            yield batch if local is None else distribution.LocalBatch(batch, stop - start)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass

    def close(self):
        pass


class IteratorSource:
    """A Python generator or iterator, read once, `_GENERATOR_PREFETCH` batches ahead in one thread.
    `limit` (when the caller knows it) bounds how many batches are ever taken from it."""
    one_pass = True
    num_batches = None

    def __init__(self, iterator, convert, limit=None):
        self.convert = convert
        self._prefetcher = _Prefetcher(1, _GENERATOR_PREFETCH)
        reads = itertools.repeat(lambda: next(iterator, _END))
        self._stream = self._prefetcher.stream(reads if limit is None else itertools.islice(reads, limit))

    def iterate(self):
        return (self.convert(batch) for batch in self._stream)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass

    def close(self):
        self._stream.close()
        self._prefetcher.close()


class PyDatasetSource:
    """A PyDataset: each pass reads its batches (reordered when shuffle is set, as in Keras) in the
    dataset's `workers` threads, `max_queue_size` ahead."""
    one_pass = False

    def __init__(self, dataset, convert, shuffle):
        self.dataset, self.convert, self.shuffle = dataset, convert, shuffle
        workers, queue_size = dataset.workers, dataset.max_queue_size
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
            raise ValueError(f"PyDataset workers must be an int >= 0, got {workers!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, numbers.Integral) or queue_size < 1:
            raise ValueError(f"PyDataset max_queue_size must be a positive int, got {queue_size!r}")
        count = dataset.num_batches
        if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0):
            raise ValueError(f"PyDataset length (num_batches) must be an int >= 0 or None, got {count!r}")
        self.num_batches = None if count is None else int(count)
        self._prefetcher = _Prefetcher(max(1, int(workers)), int(queue_size))

    def iterate(self):
        if self.num_batches is None:
            indices = itertools.count()
        else:
            indices = list(range(self.num_batches))
            if self.shuffle:
                indices = list(backend.rng().permutation(self.num_batches))
        getitem = self.dataset.__getitem__
        reads = ((lambda i=int(i): getitem(i)) for i in indices)
        return (self.convert(batch) for batch in self._prefetcher.stream(reads))

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()

    def close(self):
        self._prefetcher.close()


def warn_ran_out():
    warnings.warn("Your input ran out of data; interrupting training. Make sure that your dataset or generator "
                  "can generate at least `steps_per_epoch * epochs` batches.", stacklevel=3)


def warn_validation_ran_out():
    warnings.warn("validation_data gave no batch for this epoch, so it has no val_ metrics: a generator is "
                  "read only once; pass validation_steps with a generator yielding validation_steps * epochs "
                  "batches, or a PyDataset", stacklevel=3)


class EpochIterator:
    """Keras 3's epochs over a source.

    With `steps`, each epoch takes that many batches and the next epoch continues the same pass; a
    pass that ends first ends its epoch (with Keras' "ran out of data" warning) and the next epoch
    starts a new pass. Without `steps`, an epoch is one pass. A generator cannot start a new pass:
    once it is exhausted, `exhausted` is True and fit stops.
    """

    def __init__(self, source, steps=None, steps_name="steps_per_epoch"):
        steps = _check_steps(steps, steps_name)
        cap = config.max_steps_per_epoch()
        if cap and (steps is None or cap < steps):
            steps = cap
        self.source, self.steps = source, steps
        self._num_batches = source.num_batches
        self._iterator = None
        self._seen = 0
        self._peeked = None
        self.exhausted = False

    @property
    def num_batches(self):
        """Batches per epoch: the step count, else the source's length (None until a generator ends)."""
        return self.steps or self._num_batches

    def _next(self):
        if self._peeked is not None:
            batch, self._peeked = self._peeked, None
            return batch
        batch = next(self._iterator, _END)
        if batch is _END and self.source.one_pass:
            self.exhausted = True
        return batch

    def _new_pass(self):
        if self._iterator is None or not self.source.one_pass:
            self._iterator = self.source.iterate()
            self._peeked = None
        self._seen = 0

    def has_more(self):
        """Whether another epoch can get a batch: False only for an exhausted generator."""
        if not self.source.one_pass:
            return True
        if self._peeked is None and not self.exhausted:
            if self._iterator is None:
                self._iterator = self.source.iterate()
            batch = self._next()
            self._peeked = None if batch is _END else batch
        return self._peeked is not None

    def restart(self):
        """Start the next epoch on a new pass (evaluate starts every run from the beginning, as in Keras)."""
        self._iterator = None if not self.source.one_pass else self._iterator
        self._seen = 0

    def epoch(self):
        """The batches of one epoch, as (inputs, targets, weights)."""
        self.source.on_epoch_begin()
        try:
            steps = self.num_batches
            if steps:
                if self._iterator is None or self.steps is None:
                    self._new_pass()
                for _ in range(steps):
                    if self._num_batches is not None and self._seen >= self._num_batches:
                        if self.steps:
                            warn_ran_out()
                        break
                    batch = self._next()
                    if batch is _END:
                        if self.steps:
                            warn_ran_out()
                        break
                    self._seen += 1
                    yield batch
                if self._num_batches is not None and self._seen >= self._num_batches:
                    self._iterator = None
            else:
                self._new_pass()
                while (batch := self._next()) is not _END:
                    self._seen += 1
                    yield batch
                self._num_batches = self._seen  # one pass is now known to hold this many batches
        finally:
            self.source.on_epoch_end()

    def close(self):
        self.source.close()


def _standardized_arrays(model, trainer, x, y, sample_weight, needs_targets, what):
    """Arrays x (and y) in the model's order, checked against it, and the per-sample weights (or None)."""
    if x is None:
        raise ValueError(f"{what} is required")
    if not needs_targets:
        return _model_inputs(model, x, what), None, None
    xs, ys = trainer._standardize(_by_input_names(model, x), _by_output_names(model, y))
    return xs, ys, _trainer._sample_weights(sample_weight, None, ys, len(xs[0]))


def _array_source(xs, ys, weights, batch_size, steps, shuffle):
    count = len(xs[0])
    if batch_size is None:
        batch_size = math.ceil(count / steps) if steps and count else 32  # Keras' rule when only steps is given
    return ArraySource(xs, ys, weights, _trainer._check_positive_int(batch_size, "batch_size"), shuffle)


def _stream_source(model, trainer, x, y, sample_weight, class_weight, steps, shuffle, needs_targets, limit, what):
    """The source for a generator, iterator or PyDataset `x`."""
    kind = "a PyDataset" if isinstance(x, PyDataset) else "a generator or iterator"
    for value, name in ((y, "y"), (sample_weight, "sample_weight")):
        if value is not None:
            raise ValueError(f"when {what} is {kind}, `{name}` should not be passed: include it in the "
                             "batches, (x, y) or (x, y, sample_weight)")
    if isinstance(x, PyDataset):
        source = PyDatasetSource(x, _BatchConverter(model, trainer, needs_targets, class_weight), shuffle)
        if source.num_batches is None and steps is None:
            source.close()
            raise ValueError(f"{what} is an endless PyDataset (num_batches is None): pass the number of "
                             "batches per epoch (steps_per_epoch, validation_steps or steps)")
        return source
    if class_weight is not None:
        raise ValueError("class_weight is not supported with a generator or iterator; yield "
                         "(x, y, sample_weight) batches instead")
    if steps is None and _is_endless(x):
        raise ValueError(f"{what} is an endless iterator: pass the number of batches per epoch "
                         "(steps_per_epoch, validation_steps or steps)")
    return IteratorSource(x, _BatchConverter(model, trainer, needs_targets), limit)


def _check_shuffle(shuffle):
    if shuffle not in (True, False, "batch"):
        raise ValueError(f"shuffle must be True, False or 'batch', got {shuffle!r}")


def epoch_iterator(model, trainer, x, y=None, sample_weight=None, batch_size=None, steps=None, steps_name="steps",
                   needs_targets=True, what="x", runs=1):
    """The EpochIterator of evaluate (needs_targets) or predict over arrays, a generator or a PyDataset,
    for `runs` runs (fit's validation runs once per epoch)."""
    steps = _check_steps(steps, steps_name)
    if is_dataset(x):
        limit = steps * runs if steps else None
        source = _stream_source(model, trainer, x, y, sample_weight, None, steps, False, needs_targets, limit, what)
    else:
        xs, ys, weights = _standardized_arrays(model, trainer, x, y, sample_weight, needs_targets, what)
        source = _array_source(xs, ys, weights, batch_size, steps, False)
    return EpochIterator(source, steps, steps_name)


def fit_iterators(model, trainer, x, y, sample_weight, class_weight, batch_size, epochs, shuffle, steps_per_epoch,
                  validation_split, validation_data, validation_steps, validation_batch_size):
    """(training EpochIterator, validation EpochIterator or None) for fit's arguments."""
    steps_per_epoch = _check_steps(steps_per_epoch, "steps_per_epoch")
    validation_steps = _check_steps(validation_steps, "validation_steps")
    _check_shuffle(shuffle)
    if not isinstance(validation_split, numbers.Real) or not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    limit = steps_per_epoch * epochs if steps_per_epoch else None
    validation = None
    if is_dataset(x):
        if validation_split and validation_data is None:
            raise ValueError("validation_split is only supported for arrays; with a generator or PyDataset, "
                             "pass validation_data instead")
        train = _stream_source(model, trainer, x, y, sample_weight, class_weight, steps_per_epoch, shuffle, True,
                               limit, "x")
    else:
        xs, ys, weights = _standardized_arrays(model, trainer, x, y, sample_weight, True, "x")
        if validation_split and validation_data is None:
            # Keras takes the last fraction of the samples, before any shuffling; class_weight
            # weighs only the training part.
            count = len(xs[0])
            split = int(math.floor(count * (1 - validation_split)))
            if split == 0 or split == count:
                raise ValueError(f"{count} samples are too few to split with validation_split={validation_split}")
            validation = _array_source([a[split:] for a in xs], [a[split:] for a in ys],
                                       None if weights is None else weights[split:],
                                       validation_batch_size or batch_size, validation_steps, False)
            xs, ys = [a[:split] for a in xs], [a[:split] for a in ys]
            weights = None if weights is None else weights[:split]
        if class_weight is not None:
            weights = _trainer._sample_weights(weights, class_weight, ys, len(xs[0]))
        if len(xs[0]) == 0:
            raise ValueError("fit needs at least one training sample")
        train = _array_source(xs, ys, weights, batch_size, steps_per_epoch, shuffle)
    train_iterator = EpochIterator(train, steps_per_epoch, "steps_per_epoch")
    if validation is None and validation_data is not None:
        if is_dataset(validation_data):
            val_x, val_y, val_weight = validation_data, None, None
        elif isinstance(validation_data, (list, tuple)) and len(validation_data) in (2, 3):
            val_x, val_y, val_weight = unpack_x_y_sample_weight(tuple(validation_data))
        else:
            raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight), "
                             f"a generator or a PyDataset, got {type(validation_data).__name__}")
        try:
            return train_iterator, epoch_iterator(model, trainer, val_x, val_y, val_weight,
                                                  validation_batch_size or batch_size, validation_steps,
                                                  "validation_steps", what="validation_data", runs=epochs)
        except BaseException:
            train_iterator.close()
            raise
    return train_iterator, None if validation is None else EpochIterator(validation, validation_steps,
                                                                          "validation_steps")
