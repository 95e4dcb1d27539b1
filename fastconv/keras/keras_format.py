"""Keras 3's own files: `.keras` model archives and `.weights.h5` weights, readable by both libraries.

A `.keras` file is a zip archive of three members:
    config.json       the model as Keras serializes it: {"module", "class_name", "config",
                      "registered_name", "build_config", "compile_config"}; a functional model lists each
                      layer with its "inbound_nodes", tensors named by [layer name, node index, 0]
    metadata.json     {"keras_version", "date_saved"}
    model.weights.h5  HDF5: each layer's arrays at layers/<snake_case class name, _1, _2 for repeats>/vars/0,
                      1, ... in the order Keras gives the model's layers (for a functional model: by depth
                      from the inputs, then by when a walk back from the outputs first meets them); each vars
                      group names its layer in the attribute "name"
A `.weights.h5` file is that HDF5 part alone.

Both need the h5py package (`pip install 'fastconv[keras-format]'`). Reading is as guarded as fastconv's
native format (saving.py): no pickle, and only the layer classes the two libraries share are built,
besides the user's own classes (registered with keras.saving or passed as custom_objects, never looked
up from the module a file names); a Lambda's bytecode runs only once the user allowed it, as in Keras
(safe_mode=False or keras.config.enable_unsafe_deserialization()). Every option fastconv cannot honour
is named in the error rather than dropped, the archive members and HDF5 datasets are size-checked before
they are read, and the model is built under a budget of the weight values the file actually holds, so a
config cannot make it allocate more.
"""
import contextlib
import datetime
import io
import json
import math
import os
import re
import warnings
import zipfile

import numpy as np

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# The Keras release whose files this layout was checked against (written to metadata.json).
KERAS_VERSION = "3.15.1"
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# DEFLATE cannot expand more than ~1032:1; a member claiming more is a decompression bomb.
MAX_EXPANSION = 1100
# Datasets this small cannot exhaust memory whatever their storage; larger ones must be backed by data.
SMALL_DATASET_BYTES = 1 << 20
INSTALL_HINT = "pip install 'fastconv[keras-format]' (or pip install h5py)"

_DTYPE_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                 "registered_name": None}


def import_h5py(path, action):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{action} {os.fspath(path)} in Keras 3's format needs the h5py package: "
                          f"{INSTALL_HINT}") from None
    return h5py


def is_keras_archive_path(path):
    """Keras 3 requires this suffix for model files; fastconv writes its format for it."""
    return os.fspath(path).endswith(".keras")


def is_weights_h5_path(path):
    """Keras 3 requires this suffix for weights files."""
    return os.fspath(path).endswith(".weights.h5")


def holds_keras_format(path):
    """True when the file starts like a zip archive or an HDF5 file (Keras' formats, not fastconv's own)."""
    with open(path, "rb") as file:
        head = file.read(len(HDF5_MAGIC))
    return head.startswith(ZIP_MAGIC) or head == HDF5_MAGIC


def _fail(path, message):
    raise ValueError(f"{os.fspath(path)!s}: {message}")


def snake_case(class_name):
    """Keras' naming rule (keras.src.utils.naming.to_snake_case): ReLU -> re_lu, Conv2D -> conv2d."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ----- the layer order and weight paths Keras uses -----
def keras_layer_order(model):
    """The model's layers in the order Keras' `model.layers` would list them.

    Sequential: the stack, without its input layer. Functional: Keras' map_graph order (deepest first,
    depth counted from the outputs; ties by the order a depth-first walk back from the outputs first
    meets each layer), input layers included. Weight paths in the HDF5 file depend on this order.
    """
    from fastconv.keras.models import Sequential
    if isinstance(model, Sequential):
        return list(model.layers)
    finished, in_progress, nodes_in_order, first_seen = set(), set(), [], {}
    for tensor in model.outputs:
        # Iterative depth-first walk (Keras recurses): a node is appended after all nodes feeding it.
        stack = [(tensor.node, False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                in_progress.discard(node)
                finished.add(node)
                nodes_in_order.append(node)
                continue
            if node in finished or node in in_progress:
                continue
            first_seen.setdefault(node.layer, len(first_seen))
            in_progress.add(node)
            stack.append((node, True))
            stack.extend((t.node, False) for t in reversed(node.inputs))
    node_depth, layer_depth = {}, {}
    for node in reversed(nodes_in_order):
        depth = max(node_depth.setdefault(node, 0), layer_depth.get(node.layer, 0))
        layer_depth[node.layer] = depth
        node_depth[node] = depth
        for parent in (t.node for t in node.inputs):
            node_depth[parent] = max(depth + 1, node_depth.get(parent, 0))
    for tensor in model.inputs:  # an input the outputs do not use still belongs to the model
        if tensor.node.layer not in layer_depth:
            layer_depth[tensor.node.layer] = 0
            first_seen[tensor.node.layer] = -1
    return sorted(layer_depth, key=lambda layer: (-layer_depth[layer], first_seen[layer]))


def weight_paths(layers):
    """layers/<snake_case class name>, with _1, _2, ... for repeats: Keras' container naming."""
    used, paths = {}, []
    for layer in layers:
        name = snake_case(type(layer).__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        paths.append(f"layers/{name}")
    return paths


# ----- writing -----
def _initializer_config(initializer):
    from fastconv.keras import initializers
    config = dict(initializer.get_config())
    if type(initializer).__name__ not in ("Zeros", "Ones"):
        config["seed"] = None
    class_name = type(initializer).__name__
    if getattr(initializers, class_name, None) is not type(initializer):
        raise ValueError(f"initializer {initializer!r} has no Keras 3 equivalent")
    return {"module": "keras.initializers", "class_name": class_name, "config": config, "registered_name": None}


def _regularizer_config(regularizer):
    if regularizer is None:
        return None
    class_name = type(regularizer).__name__
    if class_name not in ("L1", "L2", "L1L2"):
        raise ValueError(f"regularizer {regularizer!r} has no Keras 3 equivalent")
    return {"module": "keras.regularizers", "class_name": class_name, "config": regularizer.get_config(),
            "registered_name": None}


def _activation_name(fn):
    from fastconv.keras import activations
    return activations.serialize(fn)


def _kernel_layer_config(layer):
    return {"activation": _activation_name(layer.activation), "use_bias": layer.use_bias,
            "kernel_initializer": _initializer_config(layer.kernel_initializer),
            "bias_initializer": _initializer_config(layer.bias_initializer),
            "kernel_regularizer": _regularizer_config(layer.kernel_regularizer),
            "bias_regularizer": _regularizer_config(layer.bias_regularizer),
            "kernel_constraint": None, "bias_constraint": None}


def _conv_config(layer, transpose):
    config = {"filters": layer.filters, "kernel_size": list(layer.kernel_size), "strides": list(layer.strides),
              "padding": layer.padding, "data_format": "channels_last", "dilation_rate": list(layer.dilation_rate)}
    if transpose:
        config["output_padding"] = None if layer.output_padding is None else list(layer.output_padding)
    else:
        config["groups"] = 1
    return {**config, **_kernel_layer_config(layer)}


def _batch_norm_config(layer):
    return {"axis": -1, "momentum": layer.momentum, "epsilon": layer.epsilon, "center": layer.center,
            "scale": layer.scale,
            **{f"{name}_initializer": _initializer_config(getattr(layer, f"{name}_initializer"))
               for name in ("beta", "gamma", "moving_mean", "moving_variance")},
            "beta_regularizer": _regularizer_config(layer.beta_regularizer),
            "gamma_regularizer": _regularizer_config(layer.gamma_regularizer),
            "beta_constraint": None, "gamma_constraint": None}


def _normalization_config(layer):
    """LayerNormalization's and GroupNormalization's common keys."""
    return {"axis": -1, "epsilon": layer.epsilon, "center": layer.center, "scale": layer.scale,
            **{f"{name}_initializer": _initializer_config(getattr(layer, f"{name}_initializer"))
               for name in ("beta", "gamma")},
            "beta_regularizer": _regularizer_config(layer.beta_regularizer),
            "gamma_regularizer": _regularizer_config(layer.gamma_regularizer),
            "beta_constraint": None, "gamma_constraint": None}


def _pooling_config(layer):
    return {"pool_size": list(layer.pool_size), "padding": layer.padding, "strides": list(layer.strides),
            "data_format": "channels_last"}


# What each shared layer class writes beyond name, trainable and dtype (Keras 3 get_config's keys).
_WRITERS = {
    "Dense": lambda layer: {"units": layer.units, **_kernel_layer_config(layer)},
    "Conv2D": lambda layer: _conv_config(layer, transpose=False),
    "Conv2DTranspose": lambda layer: _conv_config(layer, transpose=True),
    "MaxPooling2D": _pooling_config,
    "AveragePooling2D": _pooling_config,
    "GlobalAveragePooling2D": lambda layer: {"data_format": "channels_last", "keepdims": layer.keepdims},
    "GlobalMaxPooling2D": lambda layer: {"data_format": "channels_last", "keepdims": layer.keepdims},
    "Flatten": lambda layer: {"data_format": "channels_last"},
    "Dropout": lambda layer: {"rate": layer.rate, "seed": layer.seed, "noise_shape": None},
    "SpatialDropout2D": lambda layer: {"rate": layer.rate, "seed": layer.seed, "data_format": "channels_last"},
    "BatchNormalization": _batch_norm_config,
    "Activation": lambda layer: {"activation": _activation_name(layer.activation)},
    "ReLU": lambda layer: {"max_value": layer.max_value, "negative_slope": layer.negative_slope,
                           "threshold": layer.threshold},
    "LeakyReLU": lambda layer: {"negative_slope": layer.negative_slope},
    "Softmax": lambda layer: {"axis": -1},
    "Reshape": lambda layer: {"target_shape": list(layer.target_shape)},
    "Rescaling": lambda layer: {"scale": layer.scale, "offset": layer.offset},
    "ZeroPadding2D": lambda layer: {"padding": [list(side) for side in layer.padding], "data_format": "channels_last"},
    "Cropping2D": lambda layer: {"cropping": [list(side) for side in layer.cropping], "data_format": "channels_last"},
    "UpSampling2D": lambda layer: {"size": list(layer.size), "data_format": "channels_last",
                                   "interpolation": "nearest"},
    "Add": lambda layer: {}, "Subtract": lambda layer: {}, "Multiply": lambda layer: {},
    "Average": lambda layer: {}, "Maximum": lambda layer: {}, "Minimum": lambda layer: {},
    "Concatenate": lambda layer: {"axis": layer.axis},
    "ELU": lambda layer: {"alpha": layer.alpha},
    "Identity": lambda layer: {},
    "Permute": lambda layer: {"dims": list(layer.dims)},
    "DepthwiseConv2D": lambda layer: {
        "kernel_size": list(layer.kernel_size), "strides": list(layer.strides), "padding": layer.padding,
        "data_format": "channels_last", "dilation_rate": list(layer.dilation_rate),
        "depth_multiplier": layer.depth_multiplier, "activation": _activation_name(layer.activation),
        "use_bias": layer.use_bias, "depthwise_initializer": _initializer_config(layer.depthwise_initializer),
        "bias_initializer": _initializer_config(layer.bias_initializer),
        "depthwise_regularizer": _regularizer_config(layer.depthwise_regularizer),
        "bias_regularizer": _regularizer_config(layer.bias_regularizer), "activity_regularizer": None,
        "depthwise_constraint": None, "bias_constraint": None},
    "SeparableConv2D": lambda layer: {
        "filters": layer.filters, "kernel_size": list(layer.kernel_size), "strides": list(layer.strides),
        "padding": layer.padding, "data_format": "channels_last", "dilation_rate": list(layer.dilation_rate),
        "depth_multiplier": layer.depth_multiplier, "activation": _activation_name(layer.activation),
        "use_bias": layer.use_bias,
        **{f"{part}_initializer": _initializer_config(getattr(layer, f"{part}_initializer"))
           for part in ("depthwise", "pointwise", "bias")},
        **{f"{part}_regularizer": _regularizer_config(getattr(layer, f"{part}_regularizer"))
           for part in ("depthwise", "pointwise", "bias")},
        "activity_regularizer": None, "depthwise_constraint": None, "pointwise_constraint": None,
        "bias_constraint": None},
    "PReLU": lambda layer: {"alpha_initializer": _initializer_config(layer.alpha_initializer),
                            "alpha_regularizer": _regularizer_config(layer.alpha_regularizer),
                            "alpha_constraint": None, "shared_axes": layer.shared_axes},
    "GaussianNoise": lambda layer: {"stddev": layer.stddev, "seed": layer.seed},
    "LayerNormalization": lambda layer: {"rms_scaling": False, **_normalization_config(layer)},
    "GroupNormalization": lambda layer: {"groups": layer.groups, **_normalization_config(layer)},
}
# The preprocessing layers' get_config already holds exactly Keras 3's keys.
_PREPROCESSING = ("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomContrast",
                  "RandomBrightness", "RandomCrop", "Resizing", "CenterCrop", "Normalization")
_WRITERS.update({name: lambda layer: {key: value for key, value in layer.get_config().items()
                                      if key not in ("name", "trainable", "batch_input_shape")}
                 for name in _PREPROCESSING})
# Keras keeps Normalization's sample count as an int32 scalar (its third variable).
_INTEGER_WEIGHTS = {("Normalization", 2)}


def _shared_class(layer):
    """The Keras class name of a fastconv layer both libraries have, or None."""
    from fastconv.keras.layers import LAYER_CLASSES
    name = type(layer).__name__
    return name if name in _WRITERS and LAYER_CLASSES.get(name) is type(layer) else None


def _input_layer_config(layer):
    return {"batch_shape": list(layer.output.shape), "dtype": "float32", "sparse": False, "name": layer.name}


def _layer_policy_config(layer):
    """The layer's dtype policy as Keras writes it ("float32", "mixed_bfloat16", ...)."""
    from fastconv.keras import dtype_policies
    return dtype_policies.serialize(layer.dtype_policy)


def _custom_layer_entry(layer):
    """A user's layer class, as Keras writes one: its get_config under its registered name. Keras
    loads it when the user gives Keras a class of that name (registered or in custom_objects)."""
    from fastconv.keras.object_registry import get_registered_name
    if any(sublayer.weights for sublayer in getattr(layer, "_tracked_layers", [])):
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) holds layers with weights of its own, "
                         "which fastconv cannot place in a .keras file; save under another extension (e.g. "
                         ".fastconv) for fastconv's own format")
    config = {key: value for key, value in layer.get_config().items() if key != "batch_input_shape"}
    config.setdefault("dtype", dict(_DTYPE_POLICY))
    try:
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"layer {layer.name!r}: get_config() must return JSON data ({error})") from None
    return {"module": type(layer).__module__, "class_name": type(layer).__name__, "config": config,
            "registered_name": get_registered_name(type(layer))}


def keras_variables(layer):
    """A layer's own weights in Keras' order: trainable ones first, each group as created."""
    own = list(getattr(layer, "_variables", layer.weights))
    return [v for v in own if v.trainable] + [v for v in own if not v.trainable]


def _layer_entry(layer, input_shape):
    from fastconv.keras.layers import Lambda
    from fastconv.keras.models import Model
    if isinstance(layer, Model):
        raise ValueError(f"model {layer.name!r} is nested in another; fastconv writes a .keras file for one "
                         "flat Sequential or functional model (build the graph from its layers instead)")
    class_name = _shared_class(layer)
    if class_name is None and isinstance(layer, Lambda):
        layer.get_config()  # raises, saying why a Lambda cannot be saved
    if class_name is None:
        entry = _custom_layer_entry(layer)
        if input_shape is not None:
            entry["build_config"] = {"input_shape": input_shape}
        return entry
    config = {"name": layer.name, "trainable": layer.trainable, "dtype": _layer_policy_config(layer),
              **_WRITERS[class_name](layer)}
    if class_name == "SpatialDropout2D":
        del config["trainable"]  # Keras' SpatialDropout2D takes no trainable argument (and has no weights)
    entry = {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}
    if input_shape is not None:
        entry["build_config"] = {"input_shape": input_shape}
    return entry


def _tensor_ref(tensor, node_numbers):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(tensor.shape), "dtype": "float32",
                       "keras_history": [tensor.node.layer.name, node_numbers[tensor.node], 0]}}


def _functional_config(model, order):
    from fastconv.keras.layers.base import InputLayer
    from fastconv.keras.models import as_given
    # A layer's nodes are numbered in graph order: Keras recreates them in the order they are listed.
    node_numbers, counts = {}, {}
    for node in model._nodes:
        node_numbers[node] = counts.get(node.layer, 0)
        counts[node.layer] = node_numbers[node] + 1
    nodes_of = {layer: [node for node in model._nodes if node.layer is layer] for layer in order}
    layers = []
    for layer in order:
        if isinstance(layer, InputLayer):
            entry = {"module": "keras.layers", "class_name": "InputLayer", "config": _input_layer_config(layer),
                     "registered_name": None, "name": layer.name, "inbound_nodes": []}
        else:
            first = nodes_of[layer][0]
            input_shape = ([list(t.shape) for t in first.inputs] if first.multi_input else list(first.inputs[0].shape))
            entry = {**_layer_entry(layer, input_shape), "name": layer.name, "inbound_nodes": []}
            for node in nodes_of[layer]:
                refs = [_tensor_ref(t, node_numbers) for t in node.inputs]
                entry["inbound_nodes"].append({"args": [refs if node.multi_input else refs[0]], "kwargs": {}})
        layers.append(entry)

    def refs(tensors, keys, given_keys, single):
        return as_given([[t.node.layer.name, node_numbers[t.node], 0] for t in tensors], keys, given_keys, single)

    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": bool(getattr(model, "trainable", True)), "layers": layers,
                       "input_layers": refs(model.inputs, model._input_keys, model._given_input_keys,
                                            model._single_input),
                       "output_layers": refs(model.outputs, model._output_keys, model._given_output_keys,
                                             model._single_output)},
            "registered_name": "Functional", "build_config": {"input_shape": None}}


def _sequential_config(model):
    input_layer = model._input.node.layer
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "config": _input_layer_config(input_layer),
               "registered_name": None}]
    for layer in model.layers:
        node = next(node for node in model._nodes if node.layer is layer)
        layers.append(_layer_entry(layer, list(node.inputs[0].shape)))
    input_shape = list(model._input.shape)
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": model.name, "trainable": bool(getattr(model, "trainable", True)),
                       "dtype": dict(_DTYPE_POLICY), "layers": layers, "build_input_shape": input_shape},
            "registered_name": None, "build_config": {"input_shape": input_shape}}


def model_config(model):
    """The model as Keras 3's config.json holds it (compile settings included when Keras can rebuild them)."""
    from fastconv.keras.models import Sequential
    if getattr(model, "_subclassed", False):
        raise ValueError(f"model {model.name!r} is a subclassed model ({type(model).__name__}), whose call() is "
                         "Python code; fastconv writes Sequential and functional models to .keras files: save under "
                         "another extension (e.g. .fastconv) for fastconv's own format")
    order = keras_layer_order(model)
    config = _sequential_config(model) if isinstance(model, Sequential) else _functional_config(model, order)
    config["compile_config"] = _compile_config(model)
    return config


def _loss_config(given, loss_object):
    """A loss as Keras' compile_config holds it: the name it was given by, or the loss object's config."""
    from fastconv.keras import losses
    if isinstance(given, str):
        return given
    config = losses.serialize(loss_object)
    if config is None:
        raise ValueError(f"loss {loss_object!r} is the user's own class")
    return {"module": "keras.losses", "class_name": config["class_name"], "config": config["config"],
            "registered_name": None}


def _compile_config(model):
    """Keras' compile_config for a model compiled with built-in pieces Keras shares, else None.

    Only what Keras rebuilds the same way is written (built-in optimizers with a constant learning rate,
    losses by name or built-in class, metrics by name); anything else leaves the model uncompiled in
    Keras rather than compiled differently.
    """
    from fastconv.keras import optimizers
    trainer = model._trainer
    if trainer is None:
        return None
    optimizer = optimizers.serialize(trainer.optimizer)
    if optimizer is None or not isinstance(optimizer.get("config", {}).get("learning_rate"), (int, float)):
        return None
    if trainer.losses[0] is None:
        return None
    given = model.loss
    try:
        if isinstance(given, (list, tuple)):
            loss = [_loss_config(item, loss_object) for item, loss_object in zip(given, trainer.losses)]
        else:
            loss = _loss_config(given, trainer.losses[0])
    except ValueError:
        return None  # a loss Keras would not rebuild the same way: Keras loads the model uncompiled
    from fastconv.keras.saving import _metric_from_name
    # Metrics by name only, and only names that resolve again (as fastconv's own format does).
    metric_names = [metric.name for metric in trainer.metrics[0] if _metric_from_name(metric.name, trainer.losses[0])]
    return {"optimizer": {"module": "keras.optimizers", "class_name": optimizer["class_name"],
                          "config": {"name": optimizer["class_name"].lower(), **optimizer["config"]},
                          "registered_name": None},
            "loss": loss,
            "loss_weights": trainer.loss_weights, "metrics": metric_names,
            "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


# ----- optimizer state -----
def _slot_groups(optimizer):
    """How Keras lays out an optimizer's state after iterations and learning_rate: groups of fastconv
    slot indices; each group holds, per trainable variable in order, its slots of the group (Keras'
    add_optimizer_variables with several names interleaves them; separate calls follow each other).
    None for an optimizer whose state fastconv does not exchange."""
    name = type(optimizer).__name__
    if name in ("Adam", "AdamW", "Nadam", "Adadelta", "Adamax"):
        return [(0, 1)]
    if name == "Lion":
        return [(0,)]
    if name == "SGD":
        return [(0,)] if optimizer.momentum else []
    if name == "RMSprop":
        return [(0,), (1,)] if optimizer.momentum else [(0,)]
    if name == "Adagrad":
        return [(0,)]
    return None


def _trailing_scalars(optimizer):
    """State Keras keeps after the per-variable slots: Nadam's product of its momenta (_u_product)."""
    return ["_momentum_product"] if type(optimizer).__name__ == "Nadam" else []


def _keras_trainable_variables(model):
    """model.trainable_variables in Keras' order, the order its optimizer state follows."""
    return [variable for layer in keras_layer_order(model) if layer.trainable
            for variable in keras_variables(layer) if variable.trainable]


def _optimizer_arrays(model):
    """Keras' optimizer/vars/0, 1, ... for the model's optimizer, or None when it has no state to give."""
    from fastconv.keras.optimizers import Optimizer, OPTIMIZER_CLASSES
    optimizer = getattr(model._trainer, "optimizer", None) if model._trainer is not None else None
    if not isinstance(optimizer, Optimizer) or OPTIMIZER_CLASSES.get(type(optimizer).__name__) is not type(optimizer):
        return None
    groups = _slot_groups(optimizer)
    if groups is None or not isinstance(optimizer._learning_rate, float) or not optimizer.iterations:
        return None
    arrays = [np.array(optimizer.iterations, "<i8"), np.array(optimizer.learning_rate, "<f4")]
    variables = _keras_trainable_variables(model)
    for group in groups:
        for variable in variables:
            slots = optimizer._slots.get(variable) or optimizer._new_slots(variable.value)
            arrays.extend(np.asarray(slots[i], "<f4") for i in group)
    arrays.extend(np.array(getattr(optimizer, name), "<f4") for name in _trailing_scalars(optimizer))
    return arrays


def _restore_optimizer_state(weights_file, model, path):
    """Give a compiled model's optimizer the state Keras saved, when it is one fastconv shares;
    otherwise the optimizer starts afresh with a warning, as Keras does."""
    optimizer = model._trainer.optimizer
    group = weights_file.vars_group("optimizer")
    if group is None:
        return
    datasets = weights_file.arrays(group)
    groups = _slot_groups(optimizer)
    variables = _keras_trainable_variables(model)
    problem = None
    if groups is None:
        problem = f"fastconv does not exchange {type(optimizer).__name__}'s state"
    elif not isinstance(optimizer._learning_rate, float):
        problem = "the optimizer follows a learning-rate schedule"
    else:
        expected = ([()] * 2 + [variable.shape for g in groups for variable in variables for _ in g]
                    + [()] * len(_trailing_scalars(optimizer)))
        if len(datasets) != len(expected):
            problem = (f"the file holds {len(datasets)} arrays, not the {len(expected)} of "
                       f"{type(optimizer).__name__} for {len(variables)} variables")
    if problem is None:
        if [tuple(d.shape) for d in datasets] != expected:
            problem = "its arrays do not match the model's trainable weights"
    if problem is not None:
        warnings.warn(f"{os.fspath(path)}: the optimizer starts afresh: {problem}", stacklevel=4)
        return
    values = [d[()] for d in datasets]
    slots = {variable: list(optimizer._new_slots(variable.value)) for variable in variables}
    position = 2
    for group in groups:
        for variable in variables:
            for i in group:
                slots[variable][i] = np.array(values[position], dtype=variable.value.dtype)
                position += 1
    for name, value in zip(_trailing_scalars(optimizer), values[position:]):
        setattr(optimizer, name, float(value))
    optimizer.iterations = int(values[0])
    if np.float32(optimizer.learning_rate) != np.float32(values[1]):  # changed while training, e.g. by a callback
        optimizer.learning_rate = float(values[1])
    optimizer._slots.update({variable: tuple(state) for variable, state in slots.items()})


def _write_weights_h5(h5py, model, file):
    order = keras_layer_order(model)
    with h5py.File(file, "w") as h5:
        h5.create_group("vars").attrs["name"] = model.name
        for layer, path in zip(order, weight_paths(order)):
            group = h5.create_group(path).create_group("vars")
            group.attrs["name"] = layer.name
            for i, variable in enumerate(keras_variables(layer)):
                integer = (type(layer).__name__, i) in _INTEGER_WEIGHTS
                value = np.rint(variable.value).astype("<i4") if integer else variable.value.astype("<f4")
                group.create_dataset(str(i), data=value)
        optimizer_arrays = _optimizer_arrays(model)
        if optimizer_arrays is not None:  # Keras saves its optimizer's state here too
            group = h5.create_group("optimizer").create_group("vars")
            group.attrs["name"] = model._trainer.optimizer.name
            for i, value in enumerate(optimizer_arrays):
                group.create_dataset(str(i), data=value)


def _h5_bytes(h5py, model):
    buffer = io.BytesIO()
    _write_weights_h5(h5py, model, buffer)
    return buffer.getvalue()


def save_model(model, filepath):
    """Write a `.keras` archive that Keras 3's keras.models.load_model opens."""
    from fastconv.keras import saving
    h5py = import_h5py(filepath, "saving")
    if not model.built:
        raise ValueError(f"model {model.name!r} has not been built yet, so it has no weights to save")
    config_bytes = json.dumps(model_config(model)).encode("utf-8")
    metadata = {"keras_version": KERAS_VERSION, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(METADATA_MEMBER, json.dumps(metadata))
        zf.writestr(CONFIG_MEMBER, config_bytes)
        zf.writestr(WEIGHTS_MEMBER, _h5_bytes(h5py, model))
    saving._atomic_write(filepath, [archive.getbuffer()])


def save_weights(model, filepath):
    """Write `.weights.h5` in Keras 3's layout (Keras' model.load_weights reads it)."""
    from fastconv.keras import saving
    h5py = import_h5py(filepath, "saving weights to")
    if not model.built:
        raise ValueError(f"model {model.name!r} has not been built yet, so it has no weights to save")
    saving._atomic_write(filepath, [_h5_bytes(h5py, model)])


# ----- reading: the archive and the HDF5 weights -----
def _read_member(zf, name, path, limit):
    try:
        info = zf.getinfo(name)
    except KeyError:
        _fail(path, f"the archive has no {name}; it is not a Keras 3 .keras file")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        _fail(path, f"{name} uses zip compression method {info.compress_type}; only stored and deflated are read")
    if info.file_size > limit or info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        _fail(path, f"{name} claims {info.file_size} bytes from {info.compress_size} stored; "
                    "refusing it as corrupt or a decompression bomb")
    if info.flag_bits & 0x1:
        _fail(path, f"{name} is encrypted")
    try:
        with zf.open(info) as member:
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        _fail(path, f"cannot read {name} from the archive ({error})")
    if len(data) != info.file_size:
        _fail(path, f"{name} holds {len(data)} bytes, not the {info.file_size} its header says")
    return data


def _open_archive(path):
    """(config dict, HDF5 weights bytes) from a .keras archive, every part checked."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
        _fail(path, f"not a readable zip archive ({error})")
    with zf:
        config_bytes = _read_member(zf, CONFIG_MEMBER, path, MAX_CONFIG_BYTES)
        archive_size = os.path.getsize(path)
        weights = _read_member(zf, WEIGHTS_MEMBER, path, MAX_EXPANSION * archive_size)
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        _fail(path, f"{CONFIG_MEMBER} is not valid JSON ({error})")
    if not isinstance(config, dict):
        _fail(path, f"{CONFIG_MEMBER} must hold an object")
    return config, weights


class _WeightsFile:
    """Read-only access to a Keras HDF5 weights file that refuses links, external or virtual storage,
    arrays of anything but numbers and datasets declaring far more data than they store."""

    def __init__(self, h5py, source, path):
        self.h5py, self.path = h5py, path
        try:
            self.file = h5py.File(source, "r")
        except (OSError, ValueError) as error:
            _fail(path, f"the weights are not a readable HDF5 file ({error})")

    def close(self):
        self.file.close()

    def child(self, group, name, kind):
        """group[name] if it is a `kind` (Group or Dataset) reached by a hard link, None if absent."""
        try:
            link = group.get(name, default=None, getlink=True)
        except (KeyError, OSError, ValueError, RuntimeError) as error:
            _fail(self.path, f"cannot read {group.name}/{name} ({error})")
        if link is None:
            return None
        if not isinstance(link, self.h5py.HardLink):  # soft and external links could point anywhere
            _fail(self.path, f"{group.name}/{name} is a {type(link).__name__}; links are not followed")
        try:
            item = group[name]
        except (KeyError, OSError, ValueError, RuntimeError) as error:
            _fail(self.path, f"cannot read {group.name}/{name} ({error})")
        if not isinstance(item, kind):
            _fail(self.path, f"{item.name} should be an HDF5 {kind.__name__.lower()}")
        return item

    def vars_group(self, layer_path):
        """The group layers/<name>/vars, or None when the file has none for that layer."""
        group = self.file
        for part in layer_path.split("/") + ["vars"]:
            group = self.child(group, part, self.h5py.Group)
            if group is None:
                return None
        return group

    def arrays(self, group):
        """The datasets 0, 1, ... of a vars group, in index order, each checked."""
        try:
            names = list(group.keys())
        except (OSError, RuntimeError) as error:
            _fail(self.path, f"cannot list {group.name} ({error})")
        if set(names) != {str(i) for i in range(len(names))}:
            _fail(self.path, f"{group.name} should hold datasets named 0..{len(names) - 1}, "
                             f"got {sorted(map(repr, names))[:10]}")
        datasets = []
        for i in range(len(names)):
            dataset = self.child(group, str(i), self.h5py.Dataset)
            if dataset is None:  # listed, yet not found: a damaged link table
                _fail(self.path, f"{group.name}/{i} is listed but cannot be opened")
            try:
                dtype, shape = dataset.dtype, dataset.shape
                external, virtual = dataset.external, dataset.is_virtual
                stored = dataset.id.get_storage_size()
            except (OSError, RuntimeError, ValueError, TypeError) as error:
                _fail(self.path, f"cannot read {dataset.name} ({error})")
            # IEEE floats, or integers (Keras' Normalization count). (A bfloat16 layer's config is refused
            # before its arrays are read.)
            if (shape is None or dtype.kind not in "fiu" or dtype.itemsize not in (1, 2, 4, 8)
                    or (dtype.kind == "f" and dtype.itemsize == 1)):
                _fail(self.path, f"{dataset.name} is not an array of numbers (dtype {dtype}, shape {shape})")
            if external or virtual:
                _fail(self.path, f"{dataset.name} keeps its data outside the file; refused")
            declared = math.prod(shape) * dtype.itemsize
            if declared > SMALL_DATASET_BYTES and declared > MAX_EXPANSION * stored:
                _fail(self.path, f"{dataset.name} declares {declared} bytes but stores {stored}; "
                                 "refusing it as corrupt or a decompression bomb")
            datasets.append(dataset)
        return datasets

    def total_values(self, layer_paths):
        """How many weight values the file holds for these layer paths (the build budget)."""
        total = 0
        for layer_path in layer_paths:
            group = self.vars_group(layer_path)
            if group is not None:
                total += sum(math.prod(dataset.shape) for dataset in self.arrays(group))
        return total


def _load_into(weights_file, layers, paths):
    """Copy the file's arrays into the layers' weights, after checking all of them match."""
    if any(layer.weights for layer in layers) and weights_file.child(weights_file.file, "layers",
                                                                      weights_file.h5py.Group) is None:
        _fail(weights_file.path, "the HDF5 file has no 'layers' group: it is not in Keras 3's weights layout "
                                 "(Keras 2's legacy .h5 layout is not read)")
    plan = []
    for layer, layer_path in zip(layers, paths):
        group = weights_file.vars_group(layer_path)
        datasets = [] if group is None else weights_file.arrays(group)
        variables = keras_variables(layer)
        if len(variables) != len(layer.weights):
            _fail(weights_file.path, f"layer {layer.name!r} holds layers with weights of their own, which fastconv "
                                     "cannot find in a Keras weights file")
        if len(datasets) != len(variables):
            _fail(weights_file.path, f"layer {layer.name!r} has {len(variables)} weight arrays but the file holds "
                                     f"{len(datasets)} at {layer_path}/vars")
        for dataset, variable in zip(datasets, variables):
            if tuple(dataset.shape) != variable.shape:
                _fail(weights_file.path, f"{dataset.name} has shape {tuple(dataset.shape)} but layer "
                                         f"{layer.name!r}'s {variable.name!r} has shape {variable.shape}")
            plan.append((dataset, variable))
    for dataset, variable in plan:
        try:
            variable.assign(dataset[()])
        except (OSError, RuntimeError, ValueError, TypeError) as error:
            _fail(weights_file.path, f"cannot read {dataset.name} ({error})")


@contextlib.contextmanager
def _damaged_weights_named(path):
    """HDF5 structures damaged past what the checks above look at surface from h5py as OSError,
    RuntimeError, KeyError or TypeError (an attribute's unknown string encoding) at any access: each
    becomes a ValueError naming the file."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, TypeError) as error:
        _fail(path, f"the weights are damaged ({error})")


def load_weights(model, filepath):
    """Load a `.weights.h5` file (or the weights of a `.keras` archive) written by Keras 3 or fastconv."""
    h5py = import_h5py(filepath, "loading weights from")
    if not model.built:
        raise ValueError(f"model {model.name!r} has not been built yet; build it before loading weights")
    with open(filepath, "rb") as file:
        head = file.read(len(HDF5_MAGIC))
    source = io.BytesIO(_open_archive(filepath)[1]) if head.startswith(ZIP_MAGIC) else filepath
    weights_file = _WeightsFile(h5py, source, filepath)
    try:
        order = keras_layer_order(model)
        with _damaged_weights_named(filepath):
            # By path, as Keras does: layer names differ between two instances of one architecture.
            _load_into(weights_file, order, weight_paths(order))
            if model._trainer is not None:  # as Keras does, a compiled model takes the optimizer's state too
                _restore_optimizer_state(weights_file, model, filepath)
    finally:
        weights_file.close()


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Rebuild a model from a Keras 3 `.keras` archive (written by Keras or by fastconv).

    Layer classes beyond the shared ones come only from custom_objects or the keras.saving registry;
    a Lambda's bytecode runs only with safe_mode=False or keras.config.enable_unsafe_deserialization()."""
    from fastconv.keras import config as keras_config
    from fastconv.keras.layers.base import limit_weights
    h5py = import_h5py(filepath, "loading")
    loading = _Loading(custom_objects, allow_code=not safe_mode or keras_config.unsafe_deserialization_enabled())
    with open(filepath, "rb") as file:
        if file.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            _fail(filepath, "this is an HDF5 file, not a .keras archive: for a .weights.h5 file build the model and "
                            "call model.load_weights (Keras 2's legacy .h5 model files are not read)")
    config, weights = _open_archive(filepath)
    weights_file = _WeightsFile(h5py, io.BytesIO(weights), filepath)
    try:
        with _damaged_weights_named(filepath):
            # The budget: every array under layers/ in the file; no layer may allocate beyond it.
            layers_group = weights_file.child(weights_file.file, "layers", h5py.Group)
            layer_paths = [] if layers_group is None else [f"layers/{name}" for name in layers_group.keys()]
            budget = weights_file.total_values(layer_paths)
        with limit_weights(budget):
            model = _build_model(config, filepath, loading)
        order = keras_layer_order(model)
        with _damaged_weights_named(filepath):
            _load_into(weights_file, order, weight_paths(order))
        if compile and config.get("compile_config"):
            _compile_from_keras(model, config["compile_config"], filepath)
            if model._trainer is not None:
                with _damaged_weights_named(filepath):
                    _restore_optimizer_state(weights_file, model, filepath)
    finally:
        weights_file.close()
    return model


# ----- reading: the config -----
class _ConfigError(ValueError):
    pass


def _require(condition, message):
    if not condition:
        raise _ConfigError(message)


def _activation(value):
    from fastconv.keras import activations
    if isinstance(value, dict) and value.get("class_name") == "function" and isinstance(value.get("config"), str):
        value = value["config"]  # how some Keras versions wrap a built-in function's name
    _require(value is None or isinstance(value, str), f"activation must be a name, got {str(value)[:100]}")
    try:
        return activations.get(value)
    except ValueError:
        raise _ConfigError(f"activation {value!r} is not one fastconv has") from None


# Keras initializers fastconv has under another name: same distribution, same variance.
_INITIALIZER_EQUIVALENTS = {
    "LecunNormal": ("VarianceScaling", {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}),
    "LecunUniform": ("VarianceScaling", {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"}),
}
_INITIALIZER_KEYS = {
    "Zeros": (), "Ones": (), "GlorotUniform": (), "GlorotNormal": (), "HeNormal": (), "HeUniform": (),
    "RandomNormal": ("mean", "stddev"), "RandomUniform": ("minval", "maxval"),
    "VarianceScaling": ("scale", "mode", "distribution"),
}


def _initializer(value):
    from fastconv.keras import initializers
    if isinstance(value, str):
        try:
            return initializers.get(value)
        except ValueError:
            raise _ConfigError(f"initializer {value!r} is not one fastconv has") from None
    _require(isinstance(value, dict) and isinstance(value.get("config", {}), dict),
             f"initializer must be a name or a {{'class_name', 'config'}} object, got {str(value)[:100]}")
    class_name, config = value.get("class_name"), dict(value.get("config") or {})
    _require(isinstance(class_name, str), f"an initializer's class_name must be a string, got {str(class_name)[:60]}")
    if class_name in _INITIALIZER_EQUIVALENTS:
        class_name, config = _INITIALIZER_EQUIVALENTS[class_name][0], {**_INITIALIZER_EQUIVALENTS[class_name][1],
                                                                        "seed": config.get("seed")}
    _require(class_name in _INITIALIZER_KEYS, f"initializer {class_name!r} is not one fastconv has")
    # A seed only fixes the first draw of the initial values; fastconv seeds through set_random_seed.
    config.pop("seed", None)
    if config.pop("input_axes", None) is not None or config.pop("output_axes", None) is not None:
        raise _ConfigError(f"initializer {class_name} with input_axes/output_axes is not supported")
    unknown = set(config) - set(_INITIALIZER_KEYS[class_name])
    _require(not unknown, f"initializer {class_name} has options fastconv does not know: {sorted(unknown)}")
    try:
        return initializers.get({"class_name": class_name, "config": config})
    except (ValueError, TypeError) as error:
        raise _ConfigError(f"initializer {class_name}: {error}") from None


def _regularizer(value):
    from fastconv.keras import regularizers
    if value is None:
        return None
    _require(isinstance(value, (dict, str)), f"regularizer must be a name or an object, got {str(value)[:100]}")
    if isinstance(value, dict):
        config = value.get("config") or {}
        _require(isinstance(config, dict) and value.get("class_name") in ("L1", "L2", "L1L2")
                 and set(config) <= {"l1", "l2"}, f"regularizer {str(value)[:100]} is not one fastconv has")
        value = {"class_name": value["class_name"], "config": config}
    try:
        return regularizers.get(value)
    except (ValueError, TypeError) as error:
        raise _ConfigError(f"regularizer: {error}") from None


def _as_is(value):
    return value


_KERNEL_KEYS = {"activation": _activation, "use_bias": _as_is, "kernel_initializer": _initializer,
                "bias_initializer": _initializer, "kernel_regularizer": _regularizer,
                "bias_regularizer": _regularizer}
# Options fastconv lacks, accepted only at the value that means "off".
_KERNEL_OFF = {"kernel_constraint": None, "bias_constraint": None, "activity_regularizer": None,
               "quantization_config": None, "lora_rank": None, "lora_alpha": None}
_NORMALIZATION_KEYS = {"axis": _as_is, "epsilon": _as_is, "center": _as_is, "scale": _as_is,
                       "beta_initializer": _initializer, "gamma_initializer": _initializer,
                       "beta_regularizer": _regularizer, "gamma_regularizer": _regularizer}
_NORMALIZATION_OFF = {"beta_constraint": None, "gamma_constraint": None}
_CONV_KEYS = {"filters": _as_is, "kernel_size": _as_is, "strides": _as_is, "padding": _as_is,
              "dilation_rate": _as_is, **_KERNEL_KEYS}
_POOL_KEYS = {"pool_size": _as_is, "strides": _as_is, "padding": _as_is}
# Per class: (options passed on, after conversion, to fastconv's constructor; options accepted only at
# the value that means "off"; options with no effect on what fastconv computes, ignored).
_READERS = {
    "Dense": ({"units": _as_is, **_KERNEL_KEYS}, _KERNEL_OFF, ()),
    "Conv2D": ({**_CONV_KEYS, "groups": _as_is}, _KERNEL_OFF, ()),
    "Conv2DTranspose": ({**_CONV_KEYS, "output_padding": _as_is}, _KERNEL_OFF, ()),
    "MaxPooling2D": (_POOL_KEYS, {}, ()),
    "AveragePooling2D": (_POOL_KEYS, {}, ()),
    "GlobalAveragePooling2D": ({"keepdims": _as_is}, {}, ()),
    "GlobalMaxPooling2D": ({"keepdims": _as_is}, {}, ()),
    "Flatten": ({}, {}, ()),
    "Dropout": ({"rate": _as_is, "seed": _as_is}, {"noise_shape": None}, ()),
    "SpatialDropout2D": ({"rate": _as_is, "seed": _as_is}, {"noise_shape": None}, ()),
    "BatchNormalization": (
        {"axis": _as_is, "momentum": _as_is, "epsilon": _as_is, "center": _as_is, "scale": _as_is,
         "beta_initializer": _initializer, "gamma_initializer": _initializer,
         "moving_mean_initializer": _initializer, "moving_variance_initializer": _initializer,
         "beta_regularizer": _regularizer, "gamma_regularizer": _regularizer},
        {"beta_constraint": None, "gamma_constraint": None, "renorm": False},
        # synchronized only matters across devices; renorm's settings only when renorm is on.
        ("synchronized", "renorm_clipping", "renorm_momentum")),
    "Activation": ({"activation": _activation}, {}, ()),
    "ReLU": ({"max_value": _as_is, "negative_slope": _as_is, "threshold": _as_is}, {}, ()),
    "LeakyReLU": ({"negative_slope": _as_is, "alpha": _as_is}, {}, ()),
    "Softmax": ({"axis": _as_is}, {}, ()),
    "Reshape": ({"target_shape": _as_is}, {}, ()),
    "Rescaling": ({"scale": _as_is, "offset": _as_is}, {}, ()),
    "ZeroPadding2D": ({"padding": _as_is}, {}, ()),
    "Cropping2D": ({"cropping": _as_is}, {}, ()),
    "UpSampling2D": ({"size": _as_is, "interpolation": _as_is}, {}, ()),
    "Add": ({}, {}, ()), "Subtract": ({}, {}, ()), "Multiply": ({}, {}, ()),
    "Average": ({}, {}, ()), "Maximum": ({}, {}, ()), "Minimum": ({}, {}, ()),
    "Concatenate": ({"axis": _as_is}, {}, ()),
    "ELU": ({"alpha": _as_is}, {}, ()),
    "Identity": ({}, {}, ()),
    "Permute": ({"dims": _as_is}, {}, ()),
    "DepthwiseConv2D": (
        {"kernel_size": _as_is, "strides": _as_is, "padding": _as_is, "dilation_rate": _as_is,
         "depth_multiplier": _as_is, "activation": _activation, "use_bias": _as_is,
         "depthwise_initializer": _initializer, "bias_initializer": _initializer,
         "depthwise_regularizer": _regularizer, "bias_regularizer": _regularizer},
        {"activity_regularizer": None, "depthwise_constraint": None, "bias_constraint": None}, ()),
    "SeparableConv2D": (
        {"filters": _as_is, "kernel_size": _as_is, "strides": _as_is, "padding": _as_is, "dilation_rate": _as_is,
         "depth_multiplier": _as_is, "activation": _activation, "use_bias": _as_is,
         **{f"{part}_initializer": _initializer for part in ("depthwise", "pointwise", "bias")},
         **{f"{part}_regularizer": _regularizer for part in ("depthwise", "pointwise", "bias")}},
        {"activity_regularizer": None, "depthwise_constraint": None, "pointwise_constraint": None,
         "bias_constraint": None}, ()),
    "PReLU": ({"alpha_initializer": _initializer, "alpha_regularizer": _regularizer, "shared_axes": _as_is},
              {"alpha_constraint": None}, ()),
    "GaussianNoise": ({"stddev": _as_is, "seed": _as_is}, {}, ()),
    "LayerNormalization": (_NORMALIZATION_KEYS, {"rms_scaling": False, **_NORMALIZATION_OFF}, ()),
    "GroupNormalization": ({"groups": _as_is, **_NORMALIZATION_KEYS}, _NORMALIZATION_OFF, ()),
}
# The preprocessing layers take Keras' options under Keras' names; their constructors check them.
_READERS.update({name: None for name in _PREPROCESSING})
# Every layer's options that do not change what it computes in fastconv.
_COMMON_IGNORED = ("dtype", "autocast", "input_dim", "input_shape", "batch_input_shape", "batch_size")
_MODEL_CLASSES = ("Sequential", "Functional", "Model")


# The policies fastconv runs (the mixed ones with float32 weights; fastconv.keras.dtype_policies).
_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def _check_dtype(policy, mixed=True):
    """The policy name of a config's "dtype" (None if absent); mixed=False for inputs and models, whose
    data and own policy stay float32 here."""
    if isinstance(policy, dict):
        policy = (policy.get("config") or {}).get("name") if isinstance(policy.get("config"), dict) else None
    allowed = _POLICIES if mixed else ("float32",)
    _require(policy is None or policy in allowed,
             f"dtype {str(policy)[:60]!r} is not supported (fastconv runs {', '.join(allowed)})")
    return policy


class _Loading:
    """What one load_model call may use beyond the built-in layers."""

    def __init__(self, custom_objects, allow_code):
        self.custom_objects, self.allow_code = custom_objects, allow_code

    def resolve(self, name):
        from fastconv.keras import object_registry
        return object_registry.get_registered_object(name, self.custom_objects) if isinstance(name, str) else None


def _layer_from_entry(entry, loading):
    """A fastconv layer from one Keras layer entry; _ConfigError says what cannot be represented."""
    from fastconv.keras.layers import LAYER_CLASSES
    _require(isinstance(entry, dict) and isinstance(entry.get("config"), dict),
             f"each layer must be {{'class_name': ..., 'config': {{...}}}}, got {str(entry)[:100]}")
    class_name, config, registered = entry.get("class_name"), entry["config"], entry.get("registered_name")
    _require(isinstance(class_name, str) and (registered is None or isinstance(registered, str)),
             f"a layer's class_name and registered_name must be strings, got {str(class_name)[:60]}")
    if class_name == "Lambda" and registered in (None, "Lambda"):
        return _lambda_layer(config, loading)
    if class_name in _MODEL_CLASSES:
        raise _ConfigError(f"a nested model ({config.get('name')!r}) is not supported; flatten it into one model")
    if not (class_name in _READERS and LAYER_CLASSES.get(class_name) is not None and registered in (None, class_name)):
        return _custom_layer(entry, loading)
    passed, off, ignored = _READERS[class_name] or ({key: _as_is for key in config if key not in _COMMON_IGNORED},
                                                    {}, ())
    policy = _check_dtype(config.get("dtype"))
    kwargs = {} if policy is None else {"dtype": policy}
    for key, value in config.items():
        if key in ("name", "trainable"):
            kwargs[key] = value
        elif key == "data_format":  # every shared layer computes channels_last only
            _require(value in (None, "channels_last"), f"{class_name} data_format={str(value)[:40]!r} is not "
                                                        "supported (fastconv is channels_last)")
        elif key in passed:
            kwargs[key] = passed[key](value)
        elif key in off:
            _require(value == off[key] or value is None and off[key] is False,
                     f"{class_name} option {key}={str(value)[:80]} is not supported by fastconv")
        elif key not in ignored and key not in _COMMON_IGNORED:
            raise _ConfigError(f"{class_name} has an option fastconv does not know: {key!r}")
    _check_name(kwargs, class_name)
    try:
        return LAYER_CLASSES[class_name](**kwargs)
    except (TypeError, ValueError, OverflowError) as error:
        raise _ConfigError(f"{class_name} {kwargs['name']!r}: {error}") from None


def _check_name(config, class_name):
    _require(isinstance(config.get("name"), str) and config["name"], f"{class_name} needs a non-empty string name")
    _require(isinstance(config.get("trainable", True), bool), f"{class_name} trainable must be true or false")


def _custom_layer(entry, loading):
    """A user's layer class, found only among the classes the user registered or passed in
    custom_objects (their own code), never imported from the module the file names."""
    from fastconv.keras.layers.base import Layer
    from fastconv.keras.models import Model
    class_name, config = entry.get("class_name"), entry["config"]
    name = entry.get("registered_name") or class_name
    cls = loading.resolve(name)
    _require(isinstance(cls, type) and issubclass(cls, Layer) and not issubclass(cls, Model),
             f"layer class {name!r} is neither one fastconv shares with Keras ({', '.join(sorted(_READERS))}, "
             "InputLayer) nor a layer class registered with @keras.saving.register_keras_serializable() or "
             "passed as custom_objects={...}")
    _check_dtype(config.get("dtype"))
    _check_name(config, class_name)
    try:
        return cls.from_config(dict(config))
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise _ConfigError(f"{name} {config['name']!r}: {error}") from None


def _lambda_layer(config, loading):
    """Keras' Lambda: a function named in the file is looked up among the user's registered objects;
    a lambda's marshalled bytecode is run only when the user allowed it (as Keras' safe mode does)."""
    from fastconv.keras.layers import Lambda
    function = config.get("function")
    if isinstance(function, dict) and function.get("class_name") == "__lambda__":
        if not loading.allow_code:
            raise _ConfigError("a Lambda layer holds Python bytecode, which loading would run; refused unless you "
                               "trust the file and call keras.config.enable_unsafe_deserialization() (or pass "
                               "safe_mode=False)")
        function = _function_from_bytecode(function.get("config"))
    else:
        name = function
        if isinstance(function, dict):  # Keras: registered_name "package>name", or "function" and the name
            registered = function.get("registered_name")
            name = registered if registered not in (None, "function") else function.get("config")
        function = loading.resolve(name)
        _require(callable(function), f"Lambda function {str(name)[:80]!r} is not a function registered with "
                                     "keras.saving or passed in custom_objects")
    for key in ("mask", "output_shape_type", "mask_type"):
        _require(config.get(key) in (None, "raw"), f"Lambda option {key} is not supported")
    output_shape = config.get("output_shape")
    _require(output_shape is None or (isinstance(output_shape, list) and all(
        d is None or (type(d) is int and d > 0) for d in output_shape)),
        "Lambda output_shape must be a list of positive ints (a function for it is not supported)")
    arguments = config.get("arguments") or {}
    _require(isinstance(arguments, dict), "Lambda arguments must be an object")
    unknown = set(config) - {"name", "trainable", "dtype", "function", "arguments", "output_shape", "mask",
                             "output_shape_type", "mask_type"}
    _require(not unknown, f"Lambda has options fastconv does not know: {sorted(unknown)}")
    _check_dtype(config.get("dtype"))
    _check_name(config, "Lambda")
    try:
        return Lambda(function, output_shape=None if output_shape is None else tuple(output_shape),
                      arguments=arguments, name=config["name"], trainable=config.get("trainable", True))
    except (TypeError, ValueError) as error:
        raise _ConfigError(f"Lambda {config['name']!r}: {error}") from None


def _function_from_bytecode(config):
    """The function Keras' func_dump wrote: base64 of its marshalled code object, plus defaults.

    Only reached with unsafe deserialization on: marshal data from another Python version or a hostile
    file can fail or misbehave when run, which is what the user accepted. The function sees fastconv's
    keras and keras.ops under the names `keras` and `ops`."""
    import base64
    import binascii
    import builtins
    import marshal
    import types
    from fastconv import keras
    _require(isinstance(config, dict) and isinstance(config.get("code"), str), "Lambda bytecode must be a string")
    _require(config.get("closure") is None, "a Lambda whose function has a closure is not supported")
    defaults = config.get("defaults")
    _require(defaults is None or isinstance(defaults, list), "Lambda defaults must be a list")
    try:
        code = marshal.loads(base64.b64decode(config["code"].encode("ascii"), validate=False))
    except (binascii.Error, UnicodeEncodeError, ValueError, EOFError, TypeError) as error:
        raise _ConfigError(f"Lambda bytecode cannot be read by this Python ({error})") from None
    _require(isinstance(code, types.CodeType) and not code.co_freevars,
             "Lambda bytecode is not a function without a closure")
    scope = {"__builtins__": builtins, "keras": keras, "ops": keras.ops}
    return types.FunctionType(code, scope, code.co_name, None if defaults is None else tuple(defaults))


def _input_layer(config, name=None):
    from fastconv.keras.layers.base import InputLayer
    _require(isinstance(config, dict), "InputLayer config must be an object")
    _check_dtype(config.get("dtype"), mixed=False)
    for key in ("sparse", "ragged", "optional"):
        _require(not config.get(key), f"InputLayer option {key}=true is not supported by fastconv")
    unknown = set(config) - {"batch_shape", "batch_input_shape", "dtype", "sparse", "ragged", "optional", "name"}
    _require(not unknown, f"InputLayer has options fastconv does not know: {sorted(unknown)}")
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    _require(isinstance(shape, list) and len(shape) >= 2
             and all(d is None or (type(d) is int and d > 0) for d in shape),
             "InputLayer batch_shape must be a list [batch, dim, ...] of positive ints or null, got "
             f"{str(shape)[:100]}")
    layer_name = config.get("name", name)
    _require(layer_name is None or (isinstance(layer_name, str) and layer_name), "InputLayer name must be a string")
    try:
        return InputLayer(shape=tuple(shape[1:]), batch_size=shape[0], name=layer_name)
    except (TypeError, ValueError) as error:
        raise _ConfigError(f"InputLayer: {error}") from None


def _build_sequential(body, loading):
    from fastconv.keras.models import Sequential
    entries = body.get("layers")
    _require(isinstance(entries, list), "a Sequential config needs a list 'layers'")
    model = Sequential(name=body.get("name"))
    if entries and isinstance(entries[0], dict) and entries[0].get("class_name") == "InputLayer":
        model.add(_input_layer(entries[0].get("config")))
        entries = entries[1:]
    else:
        shape = body.get("build_input_shape")
        if shape is not None:
            model.add(_input_layer({"batch_shape": shape}))
    for entry in entries:
        model.add(_layer_from_entry(entry, loading))
    _require(model.built, "the Sequential model has no input shape (no InputLayer or build_input_shape)")
    return model


def _tensor_key(ref, created_names):
    _require(isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str) and type(ref[1]) is int
             and ref[2] == 0, f"a tensor reference must be [layer name, node index, 0], got {str(ref)[:100]}")
    _require(ref[0] in created_names, f"a tensor refers to an unknown layer {ref[0]!r}")
    return ref[0], ref[1]


def _node_inputs(node, created_names):
    """The tensor keys one inbound node calls its layer on, and whether it passes them as a list."""
    _require(isinstance(node, dict) and isinstance(node.get("args"), list) and len(node["args"]) == 1,
             f"each inbound node must be {{'args': [tensor or [tensors]], 'kwargs': {{}}}}, got {str(node)[:100]}")
    kwargs = node.get("kwargs", {})
    # Keras records training=False for Dropout-like layers even when the call did not pass it; here fit
    # and predict set the training flag for the whole graph, so a recorded value is not used. Other call
    # arguments must be unset.
    _require(isinstance(kwargs, dict) and all(value is None for key, value in kwargs.items() if key != "training"),
             f"layer call arguments {str(kwargs)[:100]} are not supported")
    arg = node["args"][0]
    multi = isinstance(arg, list)
    tensors = arg if multi else [arg]
    keys = []
    for tensor in tensors:
        _require(isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"
                 and isinstance(tensor.get("config"), dict),
                 f"a layer input must be a __keras_tensor__, got {str(tensor)[:100]}")
        keys.append(_tensor_key(tensor["config"].get("keras_history"), created_names))
    _require(keys, "a layer call needs at least one input")
    return keys, multi


def _build_functional(body, loading):
    from fastconv.keras.layers.base import InputLayer
    from fastconv.keras.models import Model
    entries = body.get("layers")
    _require(isinstance(entries, list), "a functional config needs a list 'layers'")
    names = set()
    for entry in entries:
        _require(isinstance(entry, dict) and isinstance(entry.get("name"), str), "each layer needs a string 'name'")
        _require(entry["name"] not in names, f"two layers are named {entry['name']!r}")
        names.add(entry["name"])
    layers, pending = {}, []
    for entry in entries:
        name, nodes = entry["name"], entry.get("inbound_nodes", [])
        if entry.get("class_name") == "InputLayer":
            layers[name] = _input_layer(entry.get("config"), name)
            _require(layers[name].name == name and nodes == [],
                     f"InputLayer {name!r} must name itself {name!r} and have no inbound nodes")
            continue
        layers[name] = _layer_from_entry(entry, loading)
        _require(layers[name].name == name, f"layer {name!r} names itself differently in its config")
        _require(isinstance(nodes, list) and nodes, f"layer {name!r} needs a non-empty list 'inbound_nodes'")
        for index, node in enumerate(nodes):
            pending.append((name, index, *_node_inputs(node, names)))
    tensors = {(name, 0): layer.output for name, layer in layers.items() if isinstance(layer, InputLayer)}
    # Call each layer once all of a node's inputs exist (the file may list them in any order).
    waiting = {}
    ready = []
    for item in pending:
        missing = [key for key in item[2] if key not in tensors]
        if missing:
            waiting.setdefault(missing[0], []).append(item)
        else:
            ready.append(item)
    while ready:
        name, index, keys, multi = ready.pop()
        inputs = [tensors[key] for key in keys]
        try:
            tensors[(name, index)] = layers[name](inputs if multi else inputs[0])
        except (TypeError, ValueError) as error:
            raise _ConfigError(f"calling layer {name!r}: {error}") from None
        for item in waiting.pop((name, index), []):
            missing = [key for key in item[2] if key not in tensors]
            if missing:
                waiting.setdefault(missing[0], []).append(item)
            else:
                ready.append(item)
    _require(not waiting, f"the graph refers to tensors no node produces: {sorted(waiting)[:5]}")

    def pick(refs, what):
        if isinstance(refs, dict):  # dict inputs or outputs: {key: a tensor reference}
            _require(refs and all(isinstance(key, str) and isinstance(ref, list) and ref and isinstance(ref[0], str)
                                  for key, ref in refs.items()),
                     f"'{what}' given as a dict must map names to tensor references")
            return {key: tensors.get(_tensor_key(ref, layers.keys())) for key, ref in refs.items()}
        _require(isinstance(refs, list) and refs, f"'{what}' must be a list or a dict of tensor references")
        if isinstance(refs[0], str):
            return tensors.get(_tensor_key(refs, layers.keys()))
        return [tensors.get(_tensor_key(ref, layers.keys())) for ref in refs]

    def flat(structure):
        return list(structure.values()) if isinstance(structure, dict) else \
            structure if isinstance(structure, list) else [structure]

    inputs, outputs = pick(body.get("input_layers"), "input_layers"), pick(body.get("output_layers"), "output_layers")
    for tensor in flat(inputs):
        _require(tensor is not None and isinstance(tensor.node.layer, InputLayer),
                 "every model input must be an InputLayer")
    _require(all(t is not None for t in flat(outputs)), "an output refers to a node that does not exist")
    try:
        return Model(inputs=inputs, outputs=outputs, name=body.get("name"))
    except (TypeError, ValueError) as error:
        raise _ConfigError(str(error)) from None


def _build_model(config, path, loading):
    class_name = config.get("class_name")
    body = config.get("config")
    try:
        _require(isinstance(body, dict), "config.json needs a 'config' object")
        _require(class_name in _MODEL_CLASSES and config.get("registered_name") in (None, "Functional", class_name),
                 f"model class {config.get('registered_name') or class_name!r} is not one fastconv reads "
                 "(Sequential and functional models only; subclassed models hold Python code)")
        _require(body.get("name") is None or isinstance(body.get("name"), str), "the model name must be a string")
        _check_dtype(body.get("dtype"))
        _require(body.get("trainable", True) in (True, False), "the model's trainable must be true or false")
        model = _build_sequential(body, loading) if class_name == "Sequential" else _build_functional(body, loading)
        if body.get("trainable") is False:  # Keras freezes every layer of a frozen model
            for layer in model.layers:
                layer.trainable = False
        return model
    except _ConfigError as error:
        _fail(path, f"cannot rebuild the model: {error}")
    except RecursionError:
        _fail(path, "cannot rebuild the model: the config nests too deeply")
    except (TypeError, KeyError, AttributeError, OverflowError) as error:  # a value of the wrong kind
        _fail(path, f"cannot rebuild the model: malformed config ({type(error).__name__}: {error})")


# ----- reading: compile settings -----
_OPTIMIZER_OFF = {"clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False,
                  "loss_scale_factor": None, "gradient_accumulation_steps": None, "amsgrad": False,
                  "centered": False}
_OPTIMIZER_IGNORED = ("name", "ema_momentum", "ema_overwrite_frequency", "is_legacy_optimizer")


# Keras loss options fastconv's losses lack, accepted at the value that means what fastconv does.
_LOSS_OFF = {"reduction": "sum_over_batch_size", "ignore_class": None, "axis": -1}


def _keras_loss(value):
    """A loss name as it is, or a Keras loss object config as the fastconv loss of the same class."""
    from fastconv.keras import losses
    if isinstance(value, str):
        return value
    _require(isinstance(value, dict) and value.get("class_name") in losses.LOSS_CLASSES
             and isinstance(value.get("config") or {}, dict), f"loss {str(value)[:80]} is not one fastconv has")
    config = dict(value.get("config") or {})
    config.pop("dtype", None)
    for key, default in _LOSS_OFF.items():
        if key in config:
            _require(config.pop(key) in (default, None), f"loss option {key} other than {default!r} is not supported")
    return losses.get({"class_name": value["class_name"], "config": config})


def _keras_metric(value):
    """A metric name as it is, or a Keras metric object config as the name fastconv resolves."""
    if isinstance(value, str):
        return value
    _require(isinstance(value, dict) and isinstance(value.get("class_name"), str), "metrics must be names or objects")
    name = snake_case(value["class_name"])
    # Keras' Accuracy class is exact equality, not the accuracy the name "accuracy" picks for the loss.
    _require(name != "accuracy", "Keras' Accuracy metric object is not restored")
    return name


def _compile_from_keras(model, config, path):
    """Compile as the file says when fastconv has every piece; otherwise warn and leave it uncompiled,
    as Keras does when a compile config cannot be restored."""
    from fastconv.keras import optimizers
    try:
        _require(isinstance(config, dict), "compile_config must be an object")
        optimizer = config.get("optimizer", "rmsprop")
        if isinstance(optimizer, dict):
            settings = optimizer.get("config")
            _require(isinstance(settings, dict), "the optimizer config must be an object")
            kept = {}
            for key, value in settings.items():
                if key in _OPTIMIZER_OFF:
                    _require(value == _OPTIMIZER_OFF[key] or value is None,
                             f"optimizer option {key}={str(value)[:60]} is not supported")
                elif key not in _OPTIMIZER_IGNORED:
                    kept[key] = value
            _require(isinstance(kept.get("learning_rate", 0.001), (int, float)),
                     "a learning-rate schedule from Keras is not restored")
            optimizer = optimizers.get({"class_name": optimizer.get("class_name"), "config": kept})
        _require(not config.get("weighted_metrics"), "weighted_metrics are not restored")
        loss = config.get("loss")
        loss = [_keras_loss(item) for item in loss] if isinstance(loss, list) else _keras_loss(loss)
        metrics = config.get("metrics")
        if isinstance(metrics, list) and len(metrics) == 1 and isinstance(metrics[0], list):
            metrics = metrics[0]  # Keras nests per-output metrics for a one-output model
        _require(metrics is None or isinstance(metrics, list), "metrics must be a list")
        metrics = None if metrics is None else [_keras_metric(item) for item in metrics]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, loss_weights=config.get("loss_weights"))
    except (_ConfigError, ValueError, TypeError, KeyError, AttributeError) as error:
        warnings.warn(f"{os.fspath(path)}: the model is returned uncompiled: its compile settings cannot be "
                      f"restored ({error})", stacklevel=3)
