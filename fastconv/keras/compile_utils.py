"""Checks of compile's Keras 3 arguments, and the names that key dict inputs, targets and losses.

Keras names a model's inputs after their `Input` layers and its outputs after the layers producing
them; a dict given for x, y, loss or loss_weights is turned into the list in the model's order here.
"""
import numbers


def input_names(model):
    return [tensor.node.layer.name for tensor in model.inputs]


def output_names(model):
    return [tensor.node.layer.name for tensor in model.outputs]


def list_by_name(mapping, names, what, allow_extra_keys=True):
    """The values of `mapping` in the order of `names`; every name must be a key. Extra keys are
    ignored for data (Keras feeds only the inputs a model has) and refused for compile settings."""
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ValueError(f"{what} is a dict without the key(s) {missing}; this model's names are {names}")
    if not allow_extra_keys:
        unknown = [key for key in mapping if key not in names]
        if unknown:
            raise ValueError(f"{what} has key(s) {unknown} that name no output of this model; its outputs are {names}")
    return [mapping[name] for name in names]


def _outputs_of_built_model(model, what):
    if not model.built:
        raise ValueError(f"{what} given as a dict needs the model's output names: build the model first "
                         "(give it an Input) or pass a list")
    return output_names(model)


def check_compile_options(model, loss, loss_weights, weighted_metrics, run_eagerly, steps_per_execution, jit_compile,
                          auto_scale_loss):
    """Validate compile's arguments; return (loss, loss_weights, steps_per_execution) with dicts made lists."""
    if isinstance(loss, dict):
        loss = list_by_name(loss, _outputs_of_built_model(model, "loss"), "loss", allow_extra_keys=False)
    if isinstance(loss_weights, dict):
        names = _outputs_of_built_model(model, "loss_weights")
        unknown = [key for key in loss_weights if key not in names]
        if unknown:
            raise ValueError(f"loss_weights has key(s) {unknown} that name no output of this model; "
                             f"its outputs are {names}")
        loss_weights = [loss_weights.get(name, 1.0) for name in names]
    if loss_weights is not None:
        weights = loss_weights if isinstance(loss_weights, (list, tuple)) else None
        if weights is None or any(isinstance(w, bool) or not isinstance(w, numbers.Real) for w in weights):
            raise TypeError("loss_weights must be a list (or a dict by output name) of numbers, got "
                            f"{loss_weights!r}; note that Keras 3's compile takes loss_weights third and metrics "
                            "fourth: pass metrics=[...] by keyword")
    if weighted_metrics is not None and not isinstance(weighted_metrics, (list, tuple)):
        raise TypeError(f"weighted_metrics must be a list, got {type(weighted_metrics).__name__}")
    if not isinstance(run_eagerly, bool):
        raise TypeError(f"run_eagerly must be a bool, got {run_eagerly!r}")
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
    if not isinstance(auto_scale_loss, bool):
        raise TypeError(f"auto_scale_loss must be a bool, got {auto_scale_loss!r}")
    if isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, numbers.Integral) or \
            steps_per_execution < 1:
        raise ValueError(f"steps_per_execution must be a positive int, got {steps_per_execution!r}")
    return loss, loss_weights, int(steps_per_execution)


def add_weighted_metrics(trainer, weighted_metrics):
    """Compile's weighted_metrics: computed with the sample weights (compile's metrics are not), after
    the metrics of each output; a name already taken by a metric gets Keras' "weighted_" prefix."""
    from fastconv.keras import metrics as metrics_module
    if not weighted_metrics:
        return
    outputs = len(trainer.losses)
    taken = {name for names in trainer.metric_names for name in names}
    for j, loss in enumerate(trainer.losses):
        prefix = "" if outputs == 1 else f"{trainer.model.outputs[j].node.layer.name}_"
        for item in weighted_metrics:
            metric = metrics_module.get(item, loss)
            name = prefix + metric.name
            if name in taken:
                name = f"{prefix}weighted_{metric.name}"
            taken.add(name)
            trainer.metrics[j].append(metric)
            trainer.metric_names[j].append(name)
            trainer.metric_weighted[j].append(True)
