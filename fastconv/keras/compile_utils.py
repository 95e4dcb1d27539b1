"""Checks of compile's Keras 3 arguments, and the names that key dict inputs, targets, losses and metrics.

Keras names a model's inputs after their `Input` layers and its outputs after the layers producing
them; a dict given for x, y, loss, loss_weights or metrics is turned into lists in the model's order here.
"""
import itertools
import numbers


def input_names(model):
    keys = getattr(model, "_input_keys", None)  # a model built on a dict of inputs: its keys
    return list(keys) if keys is not None else [tensor.node.layer.name for tensor in model.inputs]


def output_names(model):
    keys = getattr(model, "_output_keys", None)  # a model built on a dict of outputs: its keys
    return list(keys) if keys is not None else [tensor.node.layer.name for tensor in model.outputs]


def _refuse_unknown_keys(mapping, names, what):
    unknown = [key for key in mapping if key not in names]
    if unknown:
        raise ValueError(f"{what} has key(s) {unknown} that name no output of this model; its outputs are {names}")


def list_by_name(mapping, names, what, allow_extra_keys=True):
    """The values of `mapping` in the order of `names`; every name must be a key. Extra keys are
    ignored for data (Keras feeds only the inputs a model has) and refused for compile settings."""
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ValueError(f"{what} is a dict without the key(s) {missing}; this model's names are {names}")
    if not allow_extra_keys:
        _refuse_unknown_keys(mapping, names, what)
    return [mapping[name] for name in names]


def _outputs_of_built_model(model, what):
    if not model.built:
        raise ValueError(f"{what} given as a dict needs the model's output names: build the model first "
                         "(give it an Input) or pass a list")
    return output_names(model)


class CompileOptions:
    """compile's arguments in the forms the Trainer takes: lists in output order instead of dicts, and
    metrics given per output (a dict, or a list of lists) split out of the metrics for every output."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _as_list(metrics):
    if metrics is None:
        return []
    return list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]


def _metrics_by_output(model, metrics, what):
    """One list per output from a dict keyed by output name or a list of lists; None for a plain list
    (each of its metrics is computed for every output)."""
    if isinstance(metrics, dict):
        names = _outputs_of_built_model(model, what)
        _refuse_unknown_keys(metrics, names, what)
        return [_as_list(metrics.get(name)) for name in names]
    per_output = isinstance(metrics, (list, tuple)) and metrics
    if per_output and all(m is None or isinstance(m, (list, tuple)) for m in metrics):
        outputs = len(model.outputs) if model.built else 1
        if len(metrics) != outputs:
            raise ValueError(f"{what} given as a list of lists needs one list per output ({outputs}), "
                             f"got {len(metrics)}")
        return [_as_list(m) for m in metrics]
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        raise TypeError(f"{what} must be a list (or a dict by output name), got {type(metrics).__name__}")
    return None


def check_compile_options(model, loss, loss_weights, metrics, weighted_metrics, run_eagerly, steps_per_execution,
                          jit_compile, auto_scale_loss):
    """Validate compile's arguments and put them in the Trainer's forms (a CompileOptions)."""
    if isinstance(loss, dict):
        loss = list_by_name(loss, _outputs_of_built_model(model, "loss"), "loss", allow_extra_keys=False)
    if isinstance(loss_weights, dict):
        names = _outputs_of_built_model(model, "loss_weights")
        _refuse_unknown_keys(loss_weights, names, "loss_weights")
        loss_weights = [loss_weights.get(name, 1.0) for name in names]
    if loss_weights is not None:
        weights = loss_weights if isinstance(loss_weights, (list, tuple)) else None
        if weights is None or any(isinstance(w, bool) or not isinstance(w, numbers.Real) for w in weights):
            raise TypeError("loss_weights must be a list (or a dict by output name) of numbers, got "
                            f"{loss_weights!r}; note that Keras 3's compile takes loss_weights third and metrics "
                            "fourth: pass metrics=[...] by keyword")
    metrics_by_output = _metrics_by_output(model, metrics, "metrics")
    weighted_by_output = _metrics_by_output(model, weighted_metrics, "weighted_metrics")
    if weighted_by_output is None and weighted_metrics:
        weighted_by_output = [list(weighted_metrics) for _ in (model.outputs if model.built else [None])]
    if not isinstance(run_eagerly, bool):
        raise TypeError(f"run_eagerly must be a bool, got {run_eagerly!r}")
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
    if not isinstance(auto_scale_loss, bool):
        raise TypeError(f"auto_scale_loss must be a bool, got {auto_scale_loss!r}")
    if isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, numbers.Integral) or \
            steps_per_execution < 1:
        raise ValueError(f"steps_per_execution must be a positive int, got {steps_per_execution!r}")
    return CompileOptions(loss=loss, loss_weights=loss_weights, metrics=None if metrics_by_output else metrics,
                          metrics_by_output=metrics_by_output, weighted_by_output=weighted_by_output,
                          steps_per_execution=int(steps_per_execution))


def add_output_metrics(trainer, metrics_by_output, weighted):
    """Add one list of metrics per output to the trainer, after the metrics it has. Names as in Keras:
    prefixed by the output's name when there are several outputs; a name already taken gets "_1",
    "_2", ... or, for a weighted metric, the prefix "weighted_"."""
    from fastconv.keras import metrics as metrics_module
    if not metrics_by_output:
        return
    several = len(trainer.losses) > 1
    taken = {name for names in trainer.metric_names for name in names}
    for j, (loss, items) in enumerate(zip(trainer.losses, metrics_by_output)):
        prefix = f"{output_names(trainer.model)[j]}_" if several else ""
        for item in items:
            metric = metrics_module.get(item, loss)
            name = prefix + metric.name
            if name in taken:
                if weighted:
                    name = f"{prefix}weighted_{metric.name}"
                else:
                    name = next(f"{name}_{k}" for k in itertools.count(1) if f"{name}_{k}" not in taken)
            taken.add(name)
            trainer.metrics[j].append(metric)
            trainer.metric_names[j].append(name)
            trainer.metric_weighted[j].append(weighted)
    trainer._trackers = None  # the statistic -> metric object map now has more names
