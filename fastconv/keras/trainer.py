"""The training, evaluation and prediction loops (kept out of the model classes, as in Keras 3).

Data stays in the caller's dtype; each batch is gathered and converted to the backend float type on
its own, so a uint8 dataset is never copied whole to float32.
"""
import contextlib

import numpy as np

from fastconv.keras import distribution as distribution_lib
from fastconv.keras import backend, callbacks as callbacks_module, compile_utils, config, data_adapters, distributed, \
    losses, metrics as metrics_module, microbatch, optimizers


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return verbose


def _check_validation_freq(validation_freq):
    if isinstance(validation_freq, (int, np.integer)) and not isinstance(validation_freq, bool):
        if validation_freq < 1:
            raise ValueError(f"validation_freq must be a positive int or a list of epochs, got {validation_freq!r}")
    elif not isinstance(validation_freq, (list, tuple)):
        raise ValueError(f"validation_freq must be a positive int or a list of epochs, got {validation_freq!r}")


def _validates_after(epoch, validation_freq):
    """Keras' rule: validate after every validation_freq-th epoch, or after the (1-based) epochs listed."""
    if isinstance(validation_freq, (list, tuple)):
        return epoch + 1 in validation_freq
    return (epoch + 1) % validation_freq == 0


def _arrays(data, count, what):
    """The list of arrays for a model with `count` inputs (or outputs); one array when count is 1."""
    if data is None:
        raise ValueError(f"{what} is required")
    if count == 1 and not (isinstance(data, (list, tuple)) and len(data) == 1 and isinstance(data[0], np.ndarray)):
        items = [data]
    elif isinstance(data, (list, tuple)):
        items = list(data)
    else:
        raise ValueError(f"{what} must be a list of {count} arrays for this model, got one {type(data).__name__}")
    if len(items) != count:
        raise ValueError(f"{what} must hold {count} arrays for this model, got {len(items)}")
    arrays = []
    for item in items:
        array = np.asarray(item)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold numbers, got dtype {array.dtype}")
        if array.ndim == 0:
            raise ValueError(f"{what} must have a batch axis, got a scalar")
        arrays.append(array)
    return arrays


def _check_lengths(xs, ys):
    lengths = {len(a) for a in xs + (ys or [])}
    if len(lengths) > 1:
        x_lengths = [len(a) for a in xs]
        y_lengths = [len(a) for a in ys or []]
        raise ValueError(f"x and y must have the same number of samples, got x with {x_lengths} and y with {y_lengths}")
    return lengths.pop()


def _sample_weights(sample_weight, class_weight, ys, count):
    """The per-sample loss weights (float64, one per sample) from fit's sample_weight and class_weight,
    or None when neither is given. As in Keras, class_weight maps a class index to the weight of its
    samples (classes it leaves out weigh 1) and needs one output; the two multiply when both are given."""
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight)
        if weights.dtype == object or weights.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight must hold numbers, got dtype {weights.dtype}")
        weights = weights.astype(np.float64)
        if weights.ndim == 2 and weights.shape[1] == 1:
            weights = weights[:, 0]
        if weights.shape != (count,):
            raise ValueError(f"sample_weight must have one weight per sample, shape ({count},), got {weights.shape}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("sample_weight must be finite and non-negative")
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
        if len(ys) != 1:
            raise ValueError("class_weight is only supported for models with one output")
        table = {}
        for key, value in class_weight.items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
                raise ValueError(f"class_weight keys must be class indices (ints >= 0), got {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
                    not np.isfinite(value) or value < 0:
                raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {value!r}")
            table[int(key)] = float(value)
        y = ys[0]
        labels = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y), -1)[:, 0].astype(np.int64)
        classes, which = np.unique(labels, return_inverse=True)
        per_sample = np.array([table.get(int(c), 1.0) for c in classes])[which.reshape(-1)]
        weights = per_sample if weights is None else weights * per_sample
    return weights


def _per_row(weights, array):
    """The per-sample weights in array's dtype, shaped to scale its rows (the batch axis)."""
    return weights.astype(array.dtype).reshape((len(weights),) + (1,) * (array.ndim - 1))


def _inputs_batch(xs, index):
    return [np.asarray(x[index], dtype=backend.floatx()) for x in xs]


def _float_sum(values):
    """float(np.sum(values)), without the wrapper's Python (the same reduction)."""
    return float(np.add.reduce(values, axis=None))


def _float_mean(values):
    """float(np.mean(values)) for a float32 or float64 array, without the wrapper's Python: the same
    sum in the array's dtype, divided by the count in float64 and rounded back to that dtype."""
    if values.dtype.type not in (np.float32, np.float64) or not values.size:
        return float(np.mean(values))
    return float(values.dtype.type(float(np.add.reduce(values, axis=None)) / values.size))


def _loss_sum(stats, total, samples_total, count):
    """The step's (loss sum, count): total * count, or under deterministic="ranks" the per-sample
    losses' leaf-tree sum (stats["loss"], taken out) plus the added losses and regularizers."""
    leaf_sum = stats.pop("loss", None)
    return (total * count if leaf_sum is None else leaf_sum + (total - samples_total) * count, count)


class _RunningMeans:
    """Sample-weighted means of the loss and metrics over the batches seen so far. A plain number
    (from a model's own train_step, whose metrics keep their running state) replaces the last one."""

    def __init__(self, from_mean=None):
        self.totals, self.counts, self.latest = {}, {}, {}
        self.from_mean = from_mean or {}  # name -> a metric's value from its mean (RootMeanSquaredError's root)

    def add(self, stats):
        for name, value in stats.items():
            if isinstance(value, tuple):
                total, count = value
                self.totals[name] = self.totals.get(name, 0.0) + total
                self.counts[name] = self.counts.get(name, 0) + count
            else:
                self.latest[name] = value

    def results(self):
        means = {name: self.totals[name] / self.counts[name] for name in self.totals if self.counts[name]}
        for name, finish in self.from_mean.items():
            if name in means:
                means[name] = finish(means[name])
        return {**means, **self.latest}


def _step_results(stats, from_mean=None):
    """_RunningMeans' results after one step's statistics alone."""
    means = _RunningMeans(from_mean)
    means.add(stats)
    return means.results()


def _step_data(xs, ys, weights, model):
    """What Keras hands train_step/test_step: (x, y) or (x, y, sample_weight), one array per
    single input or output."""
    x = xs[0] if len(xs) == 1 else list(xs)
    y = ys[0] if len(ys) == 1 else list(ys)
    return (x, y) if weights is None else (x, y, weights)


def _plain_logs(logs, what):
    """A custom step's returned logs as floats (nested dicts, as from a metrics container, flattened)."""
    if not isinstance(logs, dict):
        raise TypeError(f"{what} must return a dict of metric names to values, got {type(logs).__name__}")
    plain = {}
    for name, value in logs.items():
        if isinstance(value, dict):
            plain.update(_plain_logs(value, what))
        else:
            plain[name] = float(np.asarray(value))
    return plain


def _takes_class_labels(loss):
    """Whether `loss` may be handed integer class labels (class_labels, fused_from_labels) in place of
    its prepare_targets' one-hot targets: the built-in sparse cross-entropy, or a subclass that changes
    neither how it prepares targets nor how it fuses with the softmax."""
    kind = type(loss)
    found = _LABEL_LOSSES.get(kind)
    if found is None:
        sparse = losses.SparseCategoricalCrossentropy
        found = _LABEL_LOSSES[kind] = issubclass(kind, sparse) and \
            kind.prepare_targets is sparse.prepare_targets and kind.fused is sparse.fused
    return found


_LABEL_LOSSES = {}  # loss class -> _takes_class_labels


def _model_class():
    """keras.Model (models.py imports this module, so it is looked up on first use, then kept)."""
    global _MODEL
    if _MODEL is None:
        from fastconv.keras.models import Model
        _MODEL = Model
    return _MODEL


_MODEL = None


class Trainer:
    """Holds the compiled loss, optimizer and metrics of one model and runs its loops."""

    def __init__(self, model, optimizer, loss, metrics, loss_weights):
        self.model = model
        self.optimizer = optimizers.get(optimizer)
        output_count = len(model.outputs) if model.built else 1
        if isinstance(loss, (list, tuple)):
            if len(loss) != output_count:
                raise ValueError(f"loss must be one loss or a list of {output_count} (one per output), got {len(loss)}")
            self.losses = [losses.get(item) for item in loss]
        else:
            self.losses = [None if loss is None else losses.get(loss)] * output_count
        if loss_weights is None:
            loss_weights = [1.0] * output_count
        if len(loss_weights) != output_count:
            raise ValueError(f"loss_weights must have one entry per output ({output_count}), got {len(loss_weights)}")
        self.loss_weights = [float(w) for w in loss_weights]
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a list, got {type(metrics).__name__}")
        self.metrics = [[metrics_module.get(m, loss) for m in metrics or []] for loss in self.losses]
        prefixes = [""] if output_count == 1 else [f"{name}_" for name in compile_utils.output_names(model)]
        self.metric_names = [[prefix + metric.name for metric in group] for prefix, group in zip(prefixes, self.metrics)]
        self.metric_weighted = [[False] * len(group) for group in self.metrics]  # compile's weighted_metrics: True
        self.output_loss_names = [] if output_count == 1 else [f"{prefix}loss" for prefix in prefixes]
        # Stateful views of the built-in steps' statistics, for model.metrics and custom train_steps.
        self.loss_tracker = metrics_module.Mean(name="loss")
        self.output_loss_trackers = [metrics_module.Mean(name=name) for name in self.output_loss_names]
        self._trackers = None  # statistic name -> its stateful metric object (see _track)
        self._checked_arrays = None  # (model graph, shapes and dtypes of x and y) that _standardize accepted

    def metric_objects(self):
        """model.metrics: the loss tracker, each output's loss tracker, then the compiled metrics."""
        return [self.loss_tracker] + self.output_loss_trackers + [m for group in self.metrics for m in group]

    def _from_mean(self):
        """{log name: how that metric's value follows from its mean}, for the metrics whose value is not
        the mean itself."""
        return {name: metric.from_mean for names, group in zip(self.metric_names, self.metrics)
                for name, metric in zip(names, group) if type(metric).from_mean is not metrics_module.Metric.from_mean}

    def _track(self, stats):
        """Add a built-in step's (total, count) statistics to the stateful metric objects."""
        trackers = self._trackers
        if trackers is None:  # made once (compile_utils.add_output_metrics resets it when adding metrics)
            trackers = self._trackers = {"loss": self.loss_tracker}
            trackers.update(zip(self.output_loss_names, self.output_loss_trackers))
            for names, group in zip(self.metric_names, self.metrics):
                trackers.update(zip(names, group))
        for name, (total, count) in stats.items():
            tracker = trackers.get(name)
            if tracker is not None:
                tracker._total += total
                tracker._count += count
        return stats

    # ----- data -----
    def _standardize(self, x, y):
        model = self.model
        single = type(x) is np.ndarray and type(y) is np.ndarray
        if single:  # train_on_batch's usual call: arrays of the kinds already checked against this model's graph
            kind = (x.shape, x.dtype, y.shape, y.dtype)
            checked = self._checked_arrays
            if checked is not None and checked[0] is model._nodes and checked[1] == kind:
                return [x], [y]
        xs = _arrays(x, len(model.inputs) if model.built else 1, "x")
        model.prepare_inputs(xs)
        custom_steps = self._overridden("train_step") or self._overridden("test_step")
        if self.losses[0] is None and not custom_steps:
            raise ValueError("compile the model with a loss before training or evaluating it")
        ys = _arrays(y, len(model.outputs), "y")
        _check_lengths(xs, ys)
        for loss, y_array, tensor in zip(self.losses, ys, model.outputs):
            if loss is not None and None not in tensor.shape[1:]:
                loss.check_target_shape(y_array.shape, (len(y_array),) + tensor.shape[1:])
        if single and len(xs) == len(ys) == 1:
            self._checked_arrays = (model._nodes, kind)  # (the graph object: a Sequential grown later is checked again)
        return xs, ys

    # ----- one batch -----
    def _losses_and_gradients(self, outputs, ys, contexts, with_gradients, weights=None):
        """Batch statistics and, when training, the loss gradient of each output. `weights` (one per
        sample, or None) scale each sample's loss, as Keras' sample_weight: the batch loss is the sum of
        the weighted losses over the batch size, and metrics are weighted means."""
        count = len(outputs[0])
        stats, grads, preactivation_outputs, total = {}, [], [], 0.0
        leaf_sums = microbatch.active()  # deterministic="ranks": each sum over the samples in the leaf tree
        total_of = microbatch.sample_sum if leaf_sums else _float_sum
        sample_losses = 0.0
        for j, (loss, y, output) in enumerate(zip(self.losses, ys, outputs)):
            # Integer class labels stay labels where the loss and metrics can use them; the one-hot
            # targets are built only for what needs them.
            labels = loss.class_labels(y, output.shape) if _takes_class_labels(loss) else None
            target = None if labels is not None else loss.prepare_targets(y, output.shape, output.dtype)
            fused = None
            if with_gradients:
                logits = self.model.graph_preactivation(contexts, j)
                if logits:
                    fused = loss.fused(target, logits[1], logits[0]) if labels is None else \
                        loss.fused_from_labels(labels, logits[1], logits[0])
            if fused:
                per_sample, grad = fused
                preactivation_outputs.append(j)
            else:
                if target is None:
                    target = losses.one_hot(labels, output.shape[-1], output.dtype)
                per_sample = loss.per_sample(target, output)
                grad = loss.gradient(target, output) if with_gradients else None
            if weights is not None:
                per_sample = per_sample * _per_row(weights, per_sample)
                if grad is not None:
                    grad = grad * _per_row(weights, grad)
            weight = self.loss_weights[j]
            if with_gradients:
                grads.append(grad if weight == 1.0 else grad * grad.dtype.type(weight))
            value = _float_mean(per_sample)
            total += weight * value
            if leaf_sums:
                row_losses = per_sample.reshape(count, -1).mean(axis=1, dtype=np.float64)
                sample_losses = sample_losses + weight * row_losses
            if self.output_loss_names:
                stats[self.output_loss_names[j]] = (microbatch.sample_sum(row_losses) if leaf_sums else value * count,
                                                    count)
            for name, metric, weighted in zip(self.metric_names[j], self.metrics[j], self.metric_weighted[j]):
                if metric.ratio:  # a ratio of two sums over the samples (precision, recall)
                    if target is None:
                        target = losses.one_hot(labels, output.shape[-1], output.dtype)
                    numerators, denominators = metric.fractions(target, output)
                    if weights is not None and weighted:
                        numerators, denominators = numerators * weights, denominators * weights
                    stats[name] = (total_of(numerators), total_of(denominators))
                    continue
                values = None if labels is None else metric.values_from_labels(labels, output)
                if values is None:
                    if target is None:
                        target = losses.one_hot(labels, output.shape[-1], output.dtype)
                    values = metric.values(target, output)
                if weights is None or not weighted:  # as in Keras, sample weights weigh only weighted_metrics
                    stats[name] = (total_of(values), values.size)
                else:
                    weighted = values.reshape(count, -1).mean(axis=1) * weights
                    stats[name] = (total_of(weighted), total_of(weights))
        if leaf_sums:  # the batch loss's sum over the samples; the model's added losses come on top
            stats["loss"] = microbatch.sample_sum(sample_losses)
        return total, stats, grads, preactivation_outputs

    def _overridden(self, name):
        return getattr(type(self.model), name) is not getattr(_model_class(), name)

    def train_step(self, xs, ys, weights=None):
        """One training step on a batch: the model's own train_step when it overrides Keras' (its logs
        are running values), else the built-in fused one (its logs are (total, count) pairs)."""
        if self._overridden("train_step"):
            return _plain_logs(self.model.train_step(_step_data(xs, ys, weights, self.model)), "train_step")
        return self.builtin_train_step(xs, ys, weights)

    def test_step(self, xs, ys, weights=None):
        if self._overridden("test_step"):
            return _plain_logs(self.model.test_step(_step_data(xs, ys, weights, self.model)), "test_step")
        return self.builtin_test_step(xs, ys, weights)

    def builtin_train_step(self, xs, ys, weights=None):
        model = self.model
        outputs, contexts = model.forward_graph(xs, training=True)
        total, stats, grads, preactivation_outputs = self._losses_and_gradients(outputs, ys, contexts, True, weights)
        samples_total = total
        variables = model.trainable_weights
        for variable in variables:
            variable.grad = None
        # under a DistributedOptimizer, gradients start travelling while the earlier layers' backward computes
        model.backward_graph(contexts, grads, preactivation_outputs,
                             distributed.start_reduction(self.optimizer, variables))
        microbatch.reduce_gradients(variables)  # deterministic="ranks": across ranks in the leaf tree
        total += model.graph_added_loss(contexts)
        for variable in variables:
            if variable.regularizer is not None:
                total += variable.regularizer(variable.value)
                variable.add_grad(variable.regularizer.gradient(variable.value))
        self.optimizer.apply([variable.grad for variable in variables], variables)
        for variable in variables:
            variable.grad = None  # free the gradient arrays between steps
        count = len(outputs[0])
        return self._track({"loss": _loss_sum(stats, total, samples_total, count), **stats})

    def builtin_test_step(self, xs, ys, weights=None):
        outputs, contexts = self.model.forward_graph(xs, training=False)
        total, stats, _, _ = self._losses_and_gradients(outputs, ys, None, False, weights)
        samples_total = total
        total += self.model.graph_added_loss(contexts)
        total += sum(v.regularizer(v.value) for v in self.model.trainable_weights if v.regularizer is not None)
        count = len(outputs[0])
        return self._track({"loss": _loss_sum(stats, total, samples_total, count), **stats})

    # ----- loops -----
    def fit(self, x, y, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        verbose = _check_verbose(verbose)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if config.max_epochs() and config.max_epochs() < epochs:
            epochs = config.max_epochs()
        _check_validation_freq(validation_freq)
        train_data, validation = data_adapters.fit_iterators(
            self.model, self, x, y, sample_weight, class_weight, batch_size, max(epochs - initial_epoch, 1), shuffle,
            steps_per_epoch, validation_split, validation_data, validation_steps, validation_batch_size)
        model = self.model
        distributed_fit = contextlib.ExitStack()  # under keras.distribution: ranks agree, gradients reduced
        try:
            if distribution_lib.active():
                distributed_fit.enter_context(distribution_lib.fit_scope(self, train_data))
            if not train_data.has_more() or train_data.num_batches == 0:
                raise ValueError("fit got no batch from x: the generator or PyDataset is empty")
            callback_list = self._callbacks(callbacks, verbose, {"epochs": epochs, "steps": train_data.num_batches,
                                                                 "verbose": verbose}, with_history=True)
            model.stop_training = False
            callback_list.on_train_begin()
            # BackupAndRestore, having restored an interrupted run, says where it goes on
            initial_epoch = model.__dict__.pop("_initial_epoch", None) or initial_epoch
            for epoch in range(initial_epoch, epochs):
                if not train_data.has_more():
                    data_adapters.warn_ran_out()  # a generator is read once: no data is left for this epoch
                    break
                callback_list.on_epoch_begin(epoch)
                logs = self._run_epoch(train_data, self.train_step, callback_list.on_train_batch_begin,
                                       callback_list.on_train_batch_end)
                if validation is not None and _validates_after(epoch, validation_freq):
                    validation.restart()
                    val_logs = self._run_epoch(validation, self.test_step)
                    if not val_logs:
                        data_adapters.warn_validation_ran_out()
                    logs.update({f"val_{name}": value for name, value in val_logs.items()})
                callback_list.on_epoch_end(epoch, logs)
                if distribution_lib.active():  # one rank stopping alone would leave the others waiting
                    model.stop_training = distribution_lib.any_rank(model.stop_training)
                if model.stop_training:
                    break
            callback_list.on_train_end()
        finally:
            distributed_fit.close()
            train_data.close()
            if validation is not None:
                validation.close()
        return model.history

    def _run_epoch(self, data, step_function, batch_begin=None, batch_end=None):
        """Run step_function on each batch of one epoch of `data` (an EpochIterator); return the mean
        logs. The batch hooks run once per compile's steps_per_execution steps, as in Keras."""
        every = getattr(self, "steps_per_execution", 1)
        self.model.reset_metrics()
        means, group_open, step = _RunningMeans(self._from_mean()), False, -1
        with contextlib.closing(data.epoch()) as batches:
            if distribution_lib.active() or distribution_lib.deterministic_ranks():  # this rank's slice of each
                # global batch, logs over all ranks (deterministic="ranks": by micro-batches, even on one rank)
                batches, step_function, batch_end = distribution_lib.sharded(
                    self, batches, step_function, batch_end, step_function == self.train_step)
            for step, (xs, ys, weights) in enumerate(batches):
                if batch_begin and not group_open:
                    batch_begin(step)
                    group_open = True
                means.add(step_function(xs, ys, weights))
                if batch_end and (step + 1) % every == 0:
                    group_open = False
                    batch_end(step, means.results())
                    if self.model.stop_training:
                        break
        if group_open:
            batch_end(step, means.results())
        return means.results()

    def _callbacks(self, callbacks, verbose, params, with_history=False):
        callbacks = list(callbacks or [])
        if with_history:
            callbacks.append(callbacks_module.History())
        if verbose and distribution_lib.is_chief():
            callbacks.append(callbacks_module.ProgbarLogger(verbose))
        return callbacks_module.CallbackList(callbacks, self.model, params)

    def _result(self, logs, return_dict):
        if return_dict:
            return logs
        if len(logs) == 1:
            return logs["loss"]
        return [logs["loss"]] + [value for name, value in logs.items() if name != "loss"]

    def evaluate(self, x, y, batch_size=None, verbose="auto", sample_weight=None, steps=None, callbacks=None,
                 return_dict=False):
        verbose = _check_verbose(verbose)
        data = data_adapters.epoch_iterator(self.model, self, x, y, sample_weight, batch_size, steps)
        try:
            callback_list = self._callbacks(callbacks, verbose, {"steps": data.num_batches, "verbose": verbose})
            callback_list.on_test_begin()
            logs = self._run_epoch(data, self.test_step, callback_list.on_test_batch_begin,
                                   callback_list.on_test_batch_end)
            if not logs:
                raise ValueError("evaluate got no batch from x: the generator or PyDataset is empty or exhausted")
            callback_list.on_test_end(logs)
        finally:
            data.close()
        return self._result(logs, return_dict)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        xs, ys = self._standardize(x, y)
        weights = _sample_weights(sample_weight, class_weight, ys, len(xs[0]))
        return self._result(_step_results(self.train_step(_inputs_batch(xs, slice(None)), ys, weights),
                                          self._from_mean()), return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        xs, ys = self._standardize(x, y)
        weights = _sample_weights(sample_weight, None, ys, len(xs[0]))
        return self._result(_step_results(self.test_step(_inputs_batch(xs, slice(None)), ys, weights),
                                          self._from_mean()), return_dict)


def predict(model, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
    """Outputs for x in batches, concatenated (a list of arrays for a multi-output model). x: arrays, a
    generator or a PyDataset (whose batches may hold targets too; only x is used)."""
    verbose = _check_verbose(verbose)
    data = data_adapters.epoch_iterator(model, None, x, batch_size=batch_size, steps=steps, needs_targets=False)
    try:
        callbacks = list(callbacks or [])
        if verbose and distribution_lib.is_chief():
            callbacks.append(callbacks_module.ProgbarLogger(verbose))
        callback_list = callbacks_module.CallbackList(callbacks, model, {"steps": data.num_batches, "verbose": verbose})
        callback_list.on_predict_begin()
        chunks = [[] for _ in model.outputs] if model.built else None
        with contextlib.closing(data.epoch()) as batches:
            forward = lambda xs: model.forward_graph(xs, training=False)[0]  # noqa: E731
            if distribution_lib.active():  # each rank its rows of every batch, gathered in order
                batches, forward = distribution_lib.sharded_predict(batches, forward)
            for step, (xs, _, _) in enumerate(batches):
                callback_list.on_predict_batch_begin(step)
                outputs = forward(xs)
                chunks = chunks or [[] for _ in model.outputs]  # a Sequential is built by its first batch
                for chunk, output in zip(chunks, outputs):
                    chunk.append(output)
                callback_list.on_predict_batch_end(step, {"outputs": outputs})
        callback_list.on_predict_end()
    finally:
        data.close()
    if chunks is None:
        raise ValueError("predict got no batch from x: the generator or PyDataset is empty")
    results = [np.concatenate(chunk) if chunk else np.empty((0,) + tuple(t.shape[1:]), backend.floatx())
               for chunk, t in zip(chunks, model.outputs)]
    return model.pack_outputs(results, given_order=False)  # Keras' predict sorts a dict's keys
