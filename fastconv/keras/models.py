"""Model (functional graph of layer calls) and Sequential (a stack that builds such a graph).

The model owns the graph: running it forward, pushing gradients back through it, its weights,
summary and configuration. Training, evaluation and prediction loops live in `trainer`.
"""
import numpy as np

from fastconv.keras import activations, backend, saving
from fastconv.keras.layers.base import InputLayer, KerasTensor, Layer, Input, _format_shape, unique_name
from fastconv.keras.summary import print_summary


def _as_tensor_list(tensors, what):
    items = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
    if not items:
        raise ValueError(f"Model needs at least one tensor in {what}")
    for item in items:
        if not isinstance(item, KerasTensor):
            raise TypeError(f"Model {what} must be tensors from keras.Input or layer calls, got {type(item).__name__}")
    return items


def _topological_nodes(outputs):
    """Every node the outputs depend on, each after the nodes feeding it."""
    order, placed, seen = [], set(), set()
    stack = [(tensor.node, False) for tensor in reversed(outputs)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            if node not in placed:
                placed.add(node)
                order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((tensor.node, False) for tensor in reversed(node.inputs) if tensor.node not in seen)
    return order


class Model:
    """A functional model: `Model(inputs=keras.Input(...), outputs=<tensor from layer calls>)`."""

    def __init__(self, inputs=None, outputs=None, name=None):
        if inputs is None or outputs is None:
            raise TypeError("Model needs inputs= (keras.Input tensors) and outputs= (tensors from calling layers "
                            "on them); subclassed models are not supported")
        self._init_state(name or unique_name("functional"))
        self._set_graph(inputs, outputs)

    def _init_state(self, name):
        self.name = name
        self.stop_training = False
        self.history = None
        self.optimizer = None
        self.loss = None
        self._trainer = None
        self._nodes = None  # set by _set_graph; None while a Sequential waits for its input shape

    # ----- graph -----
    def _set_graph(self, inputs, outputs):
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
        self.inputs = _as_tensor_list(inputs, "inputs")
        self.outputs = _as_tensor_list(outputs, "outputs")
        for tensor in self.inputs:
            if not isinstance(tensor.node.layer, InputLayer):
                raise ValueError(f"Model inputs must come from keras.Input, got {tensor!r}")
        nodes = _topological_nodes(self.outputs)
        input_nodes = [tensor.node for tensor in self.inputs]
        for node in nodes:
            if isinstance(node.layer, InputLayer) and node not in input_nodes:
                raise ValueError(f"graph disconnected: the outputs depend on input {node.layer.name!r}, "
                                 "which is not in the model's inputs")
        position = {node: i for i, node in enumerate(nodes)}
        for node in input_nodes:
            if node not in position:  # an unused input still takes its slot
                position[node] = len(nodes)
                nodes.append(node)
        self._nodes = nodes
        self._input_ids = [position[node] for node in input_nodes]
        self._output_ids = [position[tensor.node] for tensor in self.outputs]
        # The execution plan: (layer, ids of the inputs, called with a list?, id of the output).
        self._plan = [(node.layer, [position[t.node] for t in node.inputs], node.multi_input, position[node])
                      for node in nodes if not isinstance(node.layer, InputLayer)]
        consumers = {}
        for _, input_ids, _, _ in self._plan:
            for i in input_ids:
                consumers[i] = consumers.get(i, 0) + 1
        plan_index = {out_id: k for k, (_, _, _, out_id) in enumerate(self._plan)}
        # An output can take the fused loss gradient when nothing else consumes it and its layer ends
        # in an activation (softmax/sigmoid are what the losses fuse with).
        self._fusable_outputs = [
            plan_index[i] if (i in plan_index and consumers.get(i, 0) == 0 and self._output_ids.count(i) == 1
                              and hasattr(self._plan[plan_index[i]][0], "preactivation")) else None
            for i in self._output_ids]
        # A layer ending in ReLU whose output feeds nothing but a layer that can apply the ReLU's
        # gradient itself (conv2d and max pooling mask their input gradient where x <= 0, in the same
        # pass): the consumer does, and the producer's backward skips its own pass over the gradient.
        self._relu_consumers, self._relu_producers = set(), set()
        for k, (layer, input_ids, multi, _) in enumerate(self._plan):
            producer = None if multi else plan_index.get(input_ids[0])
            if (producer is not None and getattr(layer, "fuses_input_relu", False)
                    and consumers[input_ids[0]] == 1 and input_ids[0] not in self._output_ids
                    and getattr(self._plan[producer][0], "activation", None) is activations.relu):
                self._relu_consumers.add(k)
                self._relu_producers.add(producer)

    @property
    def built(self):
        return self._nodes is not None

    @property
    def input_shape(self):
        """The input shape (batch axis None), or a list of them for several inputs."""
        if not self.built:
            raise ValueError(f"model {self.name!r} has no input shape yet: it is built on its first call")
        shapes = [tensor.shape for tensor in self.inputs]
        return shapes[0] if self._single_input else shapes

    @property
    def output_shape(self):
        """The output shape (batch axis None), or a list of them for several outputs."""
        if not self.built:
            raise ValueError(f"model {self.name!r} has no output shape yet: it is built on its first call")
        shapes = [tensor.shape for tensor in self.outputs]
        return shapes[0] if self._single_output else shapes

    @property
    def layers(self):
        seen, layers = set(), []
        for node in self._nodes or []:
            if node.layer not in seen:
                seen.add(node.layer)
                layers.append(node.layer)
        return layers

    def get_layer(self, name=None, index=None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in model {self.name!r}")

    def _ensure_built(self, xs):
        """Sequential builds here on first use; a functional model is always built."""

    def _check_inputs(self, xs):
        if len(xs) != len(self.inputs):
            raise ValueError(f"model {self.name!r} expects {len(self.inputs)} input arrays, got {len(xs)}")
        for i, (x, tensor) in enumerate(zip(xs, self.inputs)):
            expected = tensor.shape
            if x.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected[1:], x.shape[1:])):
                raise ValueError(f"input {i} of model {self.name!r} must have shape {_format_shape(expected)}, "
                                 f"got an array of shape {_format_shape(x.shape)}")

    def _forward(self, xs, training):
        """Run the graph on a list of input arrays; return the output arrays and every layer's context."""
        values = [None] * len(self._nodes)
        for i, x in zip(self._input_ids, xs):
            values[i] = x
        contexts = [None] * len(self._plan)
        for k, (layer, input_ids, multi, out_id) in enumerate(self._plan):
            inputs = [values[i] for i in input_ids] if multi else values[input_ids[0]]
            values[out_id], contexts[k] = layer.forward(inputs, training)
        return [values[i] for i in self._output_ids], contexts

    def _output_logits(self, contexts, j):
        """(activation, pre-activation) of output j when the loss may fuse with it, else None."""
        k = self._fusable_outputs[j]
        if k is None:
            return None
        layer = self._plan[k][0]
        return layer.activation, layer.preactivation(contexts[k])

    def _backward(self, contexts, output_grads, preactivation_outputs=()):
        """Push output gradients back; weight gradients accumulate in each Variable's .grad.

        Output j in `preactivation_outputs` carries the gradient at its layer's pre-activation (fused loss).
        """
        grads = [None] * len(self._nodes)
        for i, grad in zip(self._output_ids, output_grads):
            grads[i] = grad
        fused_plan_entries = {self._fusable_outputs[j] for j in preactivation_outputs}
        input_grad_needed = self._input_grads_needed()
        for k in range(len(self._plan) - 1, -1, -1):
            layer, input_ids, multi, out_id = self._plan[k]
            grad = grads[out_id]
            if grad is None:  # this branch does not reach any loss
                continue
            kwargs = {"from_preactivation": True} if k in fused_plan_entries or k in self._relu_producers else {}
            if k in self._relu_consumers:
                kwargs["x_from_relu"] = True
            if not input_grad_needed[k]:
                # Nothing upstream learns (e.g. the first conv after the input): only weight gradients.
                if layer.trainable_weights:
                    layer.backward(contexts[k], grad, need_input_grad=False, **kwargs)
                continue
            input_grads = layer.backward(contexts[k], grad, **kwargs)
            for i, g in zip(input_ids, input_grads if multi else [input_grads]):
                # A new array, never +=: merge layers hand the same gradient array to several inputs.
                grads[i] = g if grads[i] is None else grads[i] + g

    def _input_grads_needed(self):
        """For each plan entry: does any trainable weight lie upstream of its inputs?"""
        upstream_learns = [False] * len(self._nodes)
        needed = []
        for layer, input_ids, _, out_id in self._plan:
            needed.append(any(upstream_learns[i] for i in input_ids))
            upstream_learns[out_id] = needed[-1] or bool(layer.trainable_weights)
        return needed

    def __call__(self, inputs, training=False):
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if any(isinstance(x, KerasTensor) for x in items):
            raise TypeError("calling a model on symbolic tensors (nesting models) is not supported; "
                            "build one functional graph from the layers instead")
        xs = [np.asarray(x, dtype=backend.floatx()) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        self._ensure_built(xs)
        self._check_inputs(xs)
        outputs, _ = self._forward(xs, training)
        return outputs[0] if self._single_output else outputs

    # ----- weights -----
    @property
    def weights(self):
        return [v for layer in self.layers for v in layer.weights]

    @property
    def trainable_weights(self):
        return [v for layer in self.layers for v in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [v for layer in self.layers for v in layer.non_trainable_weights]

    def get_weights(self):
        return [v.numpy() for v in self.weights]

    def set_weights(self, weights):
        variables, weights = self.weights, list(weights)
        if len(weights) != len(variables):
            raise ValueError(f"model {self.name!r} has {len(variables)} weight arrays, got {len(weights)}")
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def count_params(self):
        return int(sum(v.value.size for v in self.weights))

    def summary(self, line_length=None, print_fn=None):
        if not self.built:
            raise ValueError(f"model {self.name!r} has not been built yet: give the first layer input_shape=, "
                             "add a keras.Input, or call fit/predict once")
        print_summary(self, line_length=line_length, print_fn=print_fn)

    # ----- training (the loops live in fastconv.keras.trainer) -----
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, **kwargs):
        from fastconv.keras.trainer import Trainer
        if kwargs:
            raise TypeError(f"compile() got unsupported arguments: {', '.join(sorted(kwargs))}")
        self._trainer = Trainer(self, optimizer, loss, metrics, loss_weights)
        self.optimizer = self._trainer.optimizer
        self.loss = loss

    def _compiled_trainer(self):
        if self._trainer is None:
            raise RuntimeError("you must compile the model before training or evaluating it: call model.compile(...)")
        return self._trainer

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0):
        return self._compiled_trainer().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                                            callbacks=callbacks, validation_split=validation_split,
                                            validation_data=validation_data, shuffle=shuffle,
                                            class_weight=class_weight, sample_weight=sample_weight,
                                            initial_epoch=initial_epoch)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, callbacks=None,
                 return_dict=False):
        return self._compiled_trainer().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                                 sample_weight=sample_weight, callbacks=callbacks,
                                                 return_dict=return_dict)

    def predict(self, x, batch_size=None, verbose="auto", callbacks=None):
        from fastconv.keras.trainer import predict
        return predict(self, x, batch_size=batch_size, verbose=verbose, callbacks=callbacks)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        return self._compiled_trainer().train_on_batch(x, y, sample_weight=sample_weight, class_weight=class_weight,
                                                       return_dict=return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        return self._compiled_trainer().test_on_batch(x, y, sample_weight=sample_weight, return_dict=return_dict)

    def predict_on_batch(self, x):
        return self(x, training=False)

    # ----- saving -----
    def save(self, filepath):
        saving.save_model(self, filepath)

    def save_weights(self, filepath):
        saving.save_weights(self, filepath)

    def load_weights(self, filepath):
        saving.load_weights(self, filepath)

    def to_config(self):
        """{"class_name", "config"}: what model_from_config rebuilds."""
        return {"class_name": "Sequential" if isinstance(self, Sequential) else "Functional",
                "config": self.get_config()}

    def get_config(self):
        """The graph as JSON-able data: layers, and the nodes in execution order referring to them."""
        layers = self.layers
        layer_index = {layer: i for i, layer in enumerate(layers)}
        node_index = {node: i for i, node in enumerate(self._nodes)}
        return {
            "name": self.name,
            "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in layers],
            "nodes": [{"layer": layer_index[node.layer], "inputs": [node_index[t.node] for t in node.inputs],
                       "multi_input": node.multi_input} for node in self._nodes],
            "inputs": list(self._input_ids) if not self._single_input else self._input_ids[0],
            "outputs": list(self._output_ids) if not self._single_output else self._output_ids[0],
        }


class Sequential(Model):
    """A linear stack of layers; it builds as soon as the input shape is known (or on first use)."""

    def __init__(self, layers=None, name=None):
        self._init_state(name or unique_name("sequential"))
        self._layers = []
        self._input = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, KerasTensor) and isinstance(layer.node.layer, InputLayer):
            layer = layer.node.layer
        if isinstance(layer, InputLayer):
            if self._input is not None or self._layers:
                raise ValueError("an InputLayer / keras.Input can only be the first entry of a Sequential model")
            self._input = layer.output
            return
        if isinstance(layer, Sequential):
            # A Sequential model in another is spliced in: its layers (the same objects, so they share
            # their weights with it, as a nested model does in Keras) continue this stack.
            if layer._input is not None and self._input is None and not self._layers:
                self._input = Input(shape=layer._input.shape[1:])
            for inner in layer.layers:
                self.add(inner)
            return
        if isinstance(layer, Model):
            raise TypeError(f"Sequential.add takes layers and Sequential models; a functional Model "
                            f"({layer.name!r}) can only be nested by calling it in another functional model")
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a keras Layer, got {type(layer).__name__}")
        self._layers.append(layer)
        if self._input is None and len(self._layers) == 1 and layer._batch_input_shape is not None:
            self._input = Input(shape=layer._batch_input_shape[1:], batch_size=layer._batch_input_shape[0])
        if self._input is not None:
            self._connect()

    def pop(self):
        if not self._layers:
            raise ValueError("there is no layer to pop")
        layer = self._layers.pop()
        if self._layers and self._input is not None:
            self._connect()
        elif not self._layers:
            self._nodes = None
        return layer

    def _connect(self):
        x = self._input
        for layer in self._layers:
            x = layer(x)
        self._set_graph(self._input, x)

    @property
    def layers(self):
        return list(self._layers)

    def build(self, input_shape):
        """Build for inputs of input_shape (batch axis included, as in Keras)."""
        self._input = Input(shape=tuple(input_shape)[1:])
        if self._layers:
            self._connect()

    def _ensure_built(self, xs):
        if self._nodes is None:
            if not self._layers:
                raise ValueError(f"Sequential model {self.name!r} has no layers")
            self.build((None,) + tuple(xs[0].shape[1:]))

    def get_config(self):
        config = {"name": self.name,
                  "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self._layers]}
        if self._input is not None:
            config["input_shape"] = list(self._input.shape[1:])
        return config


def _index(value, limit, what):
    if type(value) is not int or not 0 <= value < limit:
        raise ValueError(f"{what} must be an int in [0, {limit}), got {value!r}")
    return value


def _layer_from_config(item, layer_classes):
    if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
        raise ValueError(f"each layer entry must be {{'class_name': ..., 'config': {{...}}}}, got {item!r}")
    class_name = item.get("class_name")
    if class_name not in layer_classes:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(layer_classes))}")
    try:
        return layer_classes[class_name].from_config(item["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"invalid config for layer class {class_name!r}: {error}") from None


def model_from_config(config, layer_classes):
    """Rebuild a model from {"class_name": "Sequential"|"Functional", "config": get_config()}.

    Only classes in `layer_classes` are ever instantiated; every index into the graph is checked.
    """
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError("model config must be {'class_name': ..., 'config': {...}}")
    kind, body = config.get("class_name"), config["config"]
    name = body.get("name")
    if not isinstance(name, str) or not isinstance(body.get("layers"), list):
        raise ValueError("model config needs a string 'name' and a list 'layers'")
    layers = [_layer_from_config(item, layer_classes) for item in body["layers"]]
    if kind == "Sequential":
        model = Sequential(name=name)
        if "input_shape" in body:
            model.add(InputLayer(shape=body["input_shape"]))
        for layer in layers:
            model.add(layer)
        return model
    if kind != "Functional":
        raise ValueError(f"model class must be 'Sequential' or 'Functional', got {kind!r}")
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        raise ValueError("functional model config needs a list 'nodes'")
    tensors, used_inputs = [], set()
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), list):
            raise ValueError(f"node {i} must be {{'layer': int, 'inputs': [int, ...], 'multi_input': bool}}")
        layer = layers[_index(node.get("layer"), len(layers), f"node {i} layer")]
        sources = [tensors[_index(k, i, f"node {i} input")] for k in node["inputs"]]
        if isinstance(layer, InputLayer):
            if sources or layer in used_inputs:
                raise ValueError(f"node {i}: an InputLayer takes no inputs and appears once")
            used_inputs.add(layer)
            tensors.append(layer.output)
        elif node.get("multi_input") is True:
            tensors.append(layer(sources))
        elif len(sources) == 1:
            tensors.append(layer(sources[0]))
        else:
            raise ValueError(f"node {i}: a single-input call needs exactly one input, got {len(sources)}")

    def pick(ref, what):
        if isinstance(ref, list):
            return [tensors[_index(k, len(tensors), what)] for k in ref]
        return tensors[_index(ref, len(tensors), what)]

    return Model(inputs=pick(body.get("inputs"), "inputs"), outputs=pick(body.get("outputs"), "outputs"), name=name)


def load_model(filepath, compile=True):
    """Load a model saved with model.save (architecture, weights and, when possible, compile settings)."""
    return saving.load_model(filepath, compile=compile)
