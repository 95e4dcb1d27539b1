"""Model (functional graph of layer calls) and Sequential (a stack that builds such a graph).

The model owns the graph: running it forward, pushing gradients back through it, its weights,
summary and configuration. Training, evaluation and prediction loops live in `trainer`.
"""
import numpy as np

from fastconv.keras import activations, autodiff, backend
from fastconv.keras.layers.base import (
    InputLayer, KerasTensor, Layer, Input, Node, _format_shape, _snake_case, _values, unique_name, unique_variables,
)
from fastconv.keras.object_registry import get_registered_name
from fastconv.keras.summary import print_summary


# The context of a layer whose forward its producer ran in its own op (Layer.fuses_max_pooling).
_RUN_BY_PRODUCER = object()


def _as_tensor_list(tensors, what):
    items = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
    if not items:
        raise ValueError(f"Model needs at least one tensor in {what}")
    for item in items:
        if not isinstance(item, KerasTensor):
            raise TypeError(f"Model {what} must be tensors from keras.Input or layer calls, got {type(item).__name__}")
    return items


def _flatten_structure(tensors, what):
    """A dict of tensors as (its values, its keys) in Keras' order (its tree.flatten sorts a dict by
    key); anything else as (itself, None)."""
    if not isinstance(tensors, dict):
        return tensors, None
    if not all(isinstance(key, str) for key in tensors):
        raise TypeError(f"Model {what} given as a dict need string keys, got {sorted(map(repr, tensors))}")
    keys = sorted(tensors)
    return [tensors[key] for key in keys], (keys, list(tensors))


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


class Model(Layer):
    """A model: a functional graph, `Model(inputs=keras.Input(...), outputs=<tensor from layer calls>)`,
    or a subclass that makes its layers in `__init__` and computes in `call(inputs, training=False)`.

    A model is also a layer: it can be called in another model's `call` or functional graph.
    """

    def __init__(self, *args, **kwargs):
        inputs = kwargs.pop("inputs", args[0] if len(args) > 0 else None)
        outputs = kwargs.pop("outputs", args[1] if len(args) > 1 else None)
        if len(args) > 2:
            raise TypeError(f"Model takes at most two positional arguments (inputs, outputs), got {len(args)}")
        functional = inputs is not None or outputs is not None
        name = kwargs.pop("name", None)
        default_name = "functional" if functional or type(self) is Model else _snake_case(type(self).__name__)
        super().__init__(name=name or unique_name(default_name), **kwargs)
        self._init_state()
        self._subclassed = not functional
        if functional:
            if inputs is None or outputs is None:
                raise TypeError("a functional Model needs both inputs= (keras.Input tensors) and outputs=")
            self._set_graph(inputs, outputs)
        elif type(self) is Model or type(self).call is Model.call:
            raise TypeError("Model needs inputs= (keras.Input tensors) and outputs= (tensors from calling layers "
                            "on them), or subclass Model and define call(self, inputs, training=False)")

    def _init_state(self):
        self.stop_training = False
        self.history = None
        self.optimizer = None
        self.loss = None
        self._trainer = None
        self._subclassed = False
        self._nodes = None  # set by _set_graph; None while a Sequential waits for its input shape
        self._input_keys = self._output_keys = None  # the keys of dict inputs / outputs, sorted
        self._given_input_keys = self._given_output_keys = None  # and in the order given

    # ----- graph -----
    def _set_graph(self, inputs, outputs):
        # dict inputs and outputs (Keras 3): listed in key order, and packed back into dicts by key
        inputs, input_keys = _flatten_structure(inputs, "inputs")
        outputs, output_keys = _flatten_structure(outputs, "outputs")
        # (keys sorted, keys as given): the model's order, and the order call() and configs give them in
        self._input_keys, self._given_input_keys = input_keys or (None, None)
        self._output_keys, self._given_output_keys = output_keys or (None, None)
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
                              and self._plan[plan_index[i]][0].fuses_output_activation) else None
            for i in self._output_ids]
        # A layer ending in ReLU whose output feeds nothing but a layer that can apply the ReLU's
        # gradient itself (conv2d and max pooling mask their input gradient where x <= 0, in the same
        # pass): the consumer does, and the producer's backward skips its own pass over the gradient.
        # Of those, a 2x2 max pooling after a layer that can run it in its own op (Conv2D): forward_graph
        # asks the producer for both (_max_pooled: the producer's output id -> the pooling's entry).
        self._relu_consumers, self._relu_producers, self._max_pooled = set(), set(), {}
        for k, (layer, input_ids, multi, _) in enumerate(self._plan):
            producer = None if multi else plan_index.get(input_ids[0])
            producer_layer = None if producer is None else self._plan[producer][0]
            if (producer is not None and layer.fuses_input_relu
                    and consumers[input_ids[0]] == 1 and input_ids[0] not in self._output_ids
                    and producer_layer.fuses_output_activation and producer_layer.activation is activations.relu):
                self._relu_consumers.add(k)
                self._relu_producers.add(producer)
                if layer.is_2x2_max_pooling and producer_layer.fuses_max_pooling:
                    self._max_pooled[input_ids[0]] = k

    @property
    def built(self):
        return self.__dict__.get("_nodes") is not None

    @built.setter
    def built(self, value):
        # `built` reads "has a graph" (see _ensure_built); a subclassed model's own build() state is kept apart.
        self.__dict__["_layer_built"] = bool(value)

    def _maybe_build(self, input_shape):
        if not self.__dict__.get("_layer_built"):
            self.build(input_shape)
            self.__dict__["_layer_built"] = True

    def pack_outputs(self, outputs, given_order=True):
        """The model's outputs (a list, in its order) as call() returns them: a dict for dict outputs
        (its keys in the order the model was made with, or sorted as predict gives them), the array
        itself for one output, else the list."""
        if self._output_keys is not None and not given_order:
            return dict(zip(self._output_keys, outputs))
        return as_given(outputs, self._output_keys, self._given_output_keys, self._single_output)

    def input_list(self, inputs):
        """A functional model's inputs as a list in its order: a dict is read by the model's input
        names (its dict keys, or its Input layers' names)."""
        if isinstance(inputs, dict):
            names = self._input_keys or [tensor.node.layer.name for tensor in self.inputs]
            missing = [name for name in names if name not in inputs]
            if missing:
                raise ValueError(f"model {self.name!r} takes inputs {names}; the dict given lacks {missing}")
            return [inputs[name] for name in names]
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]

    @property
    def output_names(self):
        """The output layers' names, in the model's order (for dict outputs, Keras keys targets, losses,
        metrics and logs by the dict's keys instead: compile_utils.output_names)."""
        if not self.built:
            raise ValueError(f"model {self.name!r} has no outputs yet: it is built on its first call")
        return [tensor.node.layer.name for tensor in self.outputs]

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
        shapes = [tensor.shape for tensor in self.outputs]  # a list for dict outputs too, as in Keras
        return shapes[0] if self._single_output else shapes

    @property
    def layers(self):
        if self._subclassed:
            return list(self._tracked_layers)
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
        """A subclassed model is built on its first data: its call runs once on (up to) two samples,
        which builds its layers, and the model becomes a one-node graph around itself. Sequential
        builds here too; a functional model is always built."""
        if not self._subclassed or self._nodes is not None:
            return
        sample = [x[:2] for x in xs]
        self(sample if len(sample) > 1 else sample[0], training=False)
        inputs = [Input(shape=x.shape[1:]) for x in xs]
        input_shape = [t.shape for t in inputs] if len(inputs) > 1 else inputs[0].shape
        output_shape = self._infer_output_shape(input_shape)
        if isinstance(output_shape, list):
            raise ValueError(f"model {self.name!r}: subclassed models with several outputs are not supported "
                             "by fit/evaluate/predict; return one array from call()")
        node = Node(self, inputs, len(inputs) > 1)
        node.output = KerasTensor(output_shape, node, name=self.name)
        self._set_graph(inputs if len(inputs) > 1 else inputs[0], node.output)

    def prepare_inputs(self, xs):
        """Build the model on its first data (Sequential and subclassed models), then check that the
        list of input arrays xs fits its inputs. The training loops call this on every batch source."""
        self._ensure_built(xs)
        self._check_inputs(xs)

    def _check_inputs(self, xs):
        if len(xs) != len(self.inputs):
            raise ValueError(f"model {self.name!r} expects {len(self.inputs)} input arrays, got {len(xs)}")
        for i, (x, tensor) in enumerate(zip(xs, self.inputs)):
            expected = tensor.shape
            if x.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected[1:], x.shape[1:])):
                raise ValueError(f"input {i} of model {self.name!r} must have shape {_format_shape(expected)}, "
                                 f"got an array of shape {_format_shape(x.shape)}")

    # ----- the graph as the training loops run it (trainer.py uses these public methods only) -----
    def forward_graph(self, xs, training):
        """Run the graph on a list of input arrays; return the output arrays and every layer's context."""
        values = [None] * len(self._nodes)
        for i, x in zip(self._input_ids, xs):
            values[i] = x
        contexts = [None] * len(self._plan)
        for k, (layer, input_ids, multi, out_id) in enumerate(self._plan):
            if contexts[k] is _RUN_BY_PRODUCER:
                continue
            inputs = [values[i] for i in input_ids] if multi else values[input_ids[0]]
            pooling = self._max_pooled.get(out_id)
            if pooling is not None:
                fused = layer.forward_max_pooled(inputs)
                if fused is not None:
                    values[self._plan[pooling][3]], contexts[k] = fused
                    contexts[pooling] = _RUN_BY_PRODUCER
                    continue
            values[out_id], contexts[k] = layer.forward(inputs, training)
        return [values[i] for i in self._output_ids], contexts

    def graph_preactivation(self, contexts, j):
        """(activation, pre-activation) of output j when the loss may fuse with it, else None."""
        k = self._fusable_outputs[j]
        if k is None:
            return None
        layer = self._plan[k][0]
        preactivation = layer.preactivation(contexts[k])
        return None if preactivation is None else (layer.activation, preactivation)

    def backward_graph(self, contexts, output_grads, preactivation_outputs=(), gradients_final=None):
        """Push output gradients back; weight gradients accumulate in each Variable's .grad.

        Output j in `preactivation_outputs` carries the gradient at its layer's pre-activation (fused loss).
        `gradients_final`, when given, is called after each layer's backward with the trainable weights
        whose gradients no layer still to come adds to, if any (a distributed step starts sending them).
        """
        grads = [None] * len(self._nodes)
        for i, grad in zip(self._output_ids, output_grads):
            grads[i] = grad
        fused_plan_entries = {self._fusable_outputs[j] for j in preactivation_outputs}
        input_grad_needed = self._input_grads_needed()
        final_after = self._gradients_final_after() if gradients_final is not None else {}
        for k in range(len(self._plan) - 1, -1, -1):
            layer, input_ids, multi, out_id = self._plan[k]
            grad = grads[out_id]
            if grad is None:  # this branch does not reach any loss
                continue
            if contexts[k] is _RUN_BY_PRODUCER:  # its producer's backward takes the gradient at its output
                grads[input_ids[0]] = grad
                if gradients_final is not None:
                    gradients_final(())
                continue
            kwargs = {"from_preactivation": True} if k in fused_plan_entries or k in self._relu_producers else {}
            if k in self._relu_consumers:
                kwargs["x_from_relu"] = True
            if not input_grad_needed[k]:
                # Nothing upstream learns (e.g. the first conv after the input): only weight gradients.
                if layer.trainable_weights:
                    layer.backward(contexts[k], grad, need_input_grad=False, **kwargs)
                    if gradients_final is not None:
                        gradients_final(final_after.get(k, ()))
                continue
            input_grads = layer.backward(contexts[k], grad, **kwargs)
            if gradients_final is not None:  # also after layers without weights: messages move on in MPI calls
                gradients_final(final_after.get(k, ()))
            for i, g in zip(input_ids, input_grads if multi else [input_grads]):
                # A new array, never +=: merge layers hand the same gradient array to several inputs.
                grads[i] = g if grads[i] is None else grads[i] + g

    def _gradients_final_after(self):
        """{plan entry: the trainable weights it is the last to add gradient to}, in backward order:
        a layer called several times adds to its weights' gradients in each call."""
        final_after = {}
        seen = set()
        for k, (layer, _, _, _) in enumerate(self._plan):
            fresh = [v for v in layer.trainable_weights if id(v) not in seen]
            seen.update(id(v) for v in fresh)
            if fresh:
                final_after[k] = fresh
        return final_after

    def graph_added_loss(self, contexts):
        """The losses the model's call-based layers added (add_loss) in the forward pass of contexts."""
        return sum(layer.added_loss(ctx) for (layer, _, _, _), ctx in zip(self._plan, contexts))

    def _input_grads_needed(self):
        """For each plan entry: does any trainable weight lie upstream of its inputs?"""
        upstream_learns = [False] * len(self._nodes)
        needed = []
        for layer, input_ids, _, out_id in self._plan:
            needed.append(any(upstream_learns[i] for i in input_ids))
            upstream_learns[out_id] = needed[-1] or bool(layer.trainable_weights)
        return needed

    def call(self, inputs, training=None):
        """Run the functional graph, each layer through its own call (recorded under a GradientTape)."""
        xs = self.input_list(inputs)
        if len(xs) != len(self.inputs):
            raise ValueError(f"model {self.name!r} expects {len(self.inputs)} inputs, got {len(xs)}")
        values = [None] * len(self._nodes)
        for i, x in zip(self._input_ids, xs):
            values[i] = x
        for layer, input_ids, multi, out_id in self._plan:
            layer_inputs = [values[i] for i in input_ids] if multi else values[input_ids[0]]
            values[out_id] = layer(layer_inputs, training=training)
        return self.pack_outputs([values[i] for i in self._output_ids])

    def build(self, input_shape):
        """Build a subclassed model for inputs of input_shape (batch axis included), as in Keras."""
        if not self._subclassed:
            return
        self.__dict__["_layer_built"] = True
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        for shape in shapes:
            if any(d is None for d in tuple(shape)[1:]):
                raise ValueError(f"model {self.name!r}: build needs every size but the batch, got {tuple(shape)}")
        self._ensure_built([np.zeros((2,) + tuple(shape)[1:], backend.floatx()) for shape in shapes])

    def compute_output_shape(self, input_shape):
        if self._subclassed:
            return self._infer_output_shape(input_shape)
        return self.output_shape

    def __call__(self, inputs, training=None, **kwargs):
        if isinstance(inputs, dict) and not self._subclassed and self.built:
            inputs = self.input_list(inputs)
            inputs = inputs[0] if self._single_input and len(inputs) == 1 else inputs
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if any(isinstance(x, KerasTensor) for x in items):
            if not self.built:
                raise ValueError(f"model {self.name!r} must be built before it is called on symbolic tensors")
            return super().__call__(inputs, training=training, **kwargs)
        if self._subclassed:
            return super().__call__(inputs, training=training, **kwargs)
        xs = [np.asarray(autodiff.unwrap(x), dtype=backend.floatx()) for x in items]
        self.prepare_inputs(xs)
        if autodiff.recording() or kwargs:
            return super().__call__(inputs, training=training, **kwargs)
        outputs, _ = self.forward_graph(xs, bool(training))
        return self.pack_outputs(outputs)

    # ----- weights -----
    @property
    def weights(self):
        if self._subclassed:
            return self._all_variables()
        return unique_variables([v for layer in self.layers for v in layer.weights])

    variables = weights

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        if self._subclassed:
            return Layer.trainable_weights.fget(self)
        return unique_variables([v for layer in self.layers for v in layer.trainable_weights])

    trainable_variables = trainable_weights

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    non_trainable_variables = non_trainable_weights

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

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False, show_trainable=False,
                layer_range=None):
        if not self.built:
            raise ValueError(f"model {self.name!r} has not been built yet: give the first layer input_shape=, "
                             "add a keras.Input, or call fit/predict once")
        print_summary(self, line_length=line_length, positions=positions, print_fn=print_fn,
                      expand_nested=expand_nested, show_trainable=show_trainable, layer_range=layer_range)

    # ----- training (the loops live in fastconv.keras.trainer) -----
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True):
        """Keras 3's compile (its argument order). run_eagerly, jit_compile and auto_scale_loss are accepted
        and have no effect: every step here runs eagerly on the C kernels, in float32."""
        from fastconv.keras.trainer import Trainer
        from fastconv.keras.compile_utils import add_output_metrics, check_compile_options
        options = check_compile_options(self, loss, loss_weights, metrics, weighted_metrics, run_eagerly,
                                        steps_per_execution, jit_compile, auto_scale_loss)
        self._trainer = Trainer(self, optimizer, options.loss, options.metrics, options.loss_weights)
        self._trainer.steps_per_execution = options.steps_per_execution
        add_output_metrics(self._trainer, options.metrics_by_output, weighted=False)
        add_output_metrics(self._trainer, options.weighted_by_output, weighted=True)
        self.optimizer = self._trainer.optimizer
        self.loss = options.loss
        self.steps_per_execution, self.run_eagerly, self.jit_compile = options.steps_per_execution, run_eagerly, \
            jit_compile

    def _compiled_trainer(self):
        if self._trainer is None:
            raise RuntimeError("you must compile the model before training or evaluating it: call model.compile(...)")
        return self._trainer

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """x: arrays (a dict keyed by Input names for several inputs), a generator or a keras.utils.PyDataset."""
        return self._compiled_trainer().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                                            callbacks=callbacks, validation_split=validation_split,
                                            validation_data=validation_data, shuffle=shuffle,
                                            class_weight=class_weight, sample_weight=sample_weight,
                                            initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                                            validation_steps=validation_steps,
                                            validation_batch_size=validation_batch_size,
                                            validation_freq=validation_freq)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        return self._compiled_trainer().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                                 sample_weight=sample_weight, steps=steps, callbacks=callbacks,
                                                 return_dict=return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        from fastconv.keras.trainer import predict
        return predict(self, x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        return self._compiled_trainer().train_on_batch(x, y, sample_weight=sample_weight, class_weight=class_weight,
                                                       return_dict=return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        return self._compiled_trainer().test_on_batch(x, y, sample_weight=sample_weight, return_dict=return_dict)

    def predict_on_batch(self, x):
        return self(x, training=False)

    # ----- custom training (keras.io, "Customizing what happens in fit()") -----
    @property
    def metrics(self):
        """The loss tracker and the compiled metrics, stateful (update_state/result/reset_state)."""
        return [] if self._trainer is None else self._trainer.metric_objects()

    @property
    def metrics_names(self):
        return [metric.name for metric in self.metrics]

    def reset_metrics(self):
        for metric in self.metrics:
            metric.reset_state()

    def train_step(self, data):
        """One step of fit on `data` = (x, y) or (x, y, sample_weight). Override it to customise fit;
        this default (also reached through super().train_step) is the built-in fused step."""
        trainer = self._compiled_trainer()
        xs, ys, weights = self._step_arrays(trainer, data)
        trainer.builtin_train_step(xs, ys, weights)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        """One step of evaluate (and of fit's validation); override it to customise them."""
        trainer = self._compiled_trainer()
        xs, ys, weights = self._step_arrays(trainer, data)
        trainer.builtin_test_step(xs, ys, weights)
        return {metric.name: metric.result() for metric in self.metrics}

    def _step_arrays(self, trainer, data):
        from fastconv.keras.utils import unpack_x_y_sample_weight
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        xs, ys = trainer._standardize(x, y)
        weights = None if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(len(xs[0]))
        return [np.asarray(a, dtype=backend.floatx()) for a in xs], ys, weights

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss of y_pred against y plus the weight regularization penalties and the
        losses layers added: differentiable under a GradientTape, as in Keras 3."""
        trainer = self._compiled_trainer()
        if y is None or y_pred is None:
            raise ValueError("compute_loss needs y= and y_pred=")
        ys = y if isinstance(y, (list, tuple)) and len(trainer.losses) > 1 else [y]
        preds = y_pred if isinstance(y_pred, (list, tuple)) and len(trainer.losses) > 1 else [y_pred]
        if len(ys) != len(trainer.losses) or len(preds) != len(trainer.losses):
            raise ValueError(f"compute_loss needs one y and one y_pred per output ({len(trainer.losses)})")
        total = None
        for loss, weight, target, pred in zip(trainer.losses, trainer.loss_weights, ys, preds):
            if loss is None:
                raise ValueError("compile the model with a loss before calling compute_loss")
            term = loss(target, pred, sample_weight=sample_weight)
            if weight != 1.0:
                term = term * weight
            total = term if total is None else total + term
        for penalty in self._penalties():
            total = total + penalty
        return total

    def _penalties(self):
        """Each trainable weight's regularization penalty (differentiable) and the losses added by
        layers during the last call."""
        from fastconv.keras import autodiff
        penalties = []
        for variable in self.trainable_weights:
            regularizer = variable.regularizer
            if regularizer is not None:
                value = np.asarray(regularizer(variable.value), dtype=variable.value.dtype)
                penalties.append(autodiff.record(value, (variable,), lambda g, v=variable: (
                    v.regularizer.gradient(v.value) * g,)))
        layers = [self] + (self._tracked_layers if self._subclassed else self.layers)
        for layer in layers:
            penalties.extend(layer._losses if layer is self else layer.losses_added())
        return penalties

    @property
    def compiled_loss(self):
        """The Keras 2 spelling: compiled_loss(y, y_pred, sample_weight=None, regularization_losses=None)."""
        def compiled_loss(y, y_pred, sample_weight=None, regularization_losses=None):
            return self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
        return compiled_loss

    @property
    def compiled_metrics(self):
        """The Keras 2 spelling: compiled_metrics.update_state(y, y_pred, sample_weight=None)."""
        return _CompiledMetrics(self)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Update the compiled metrics with this batch and return every metric's result."""
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return {metric.name: metric.result() for metric in self.metrics}

    # ----- saving (fastconv.keras.saving builds on this module, so it is imported when used) -----
    def save(self, filepath):
        from fastconv.keras import saving
        saving.save_model(self, filepath)

    def save_weights(self, filepath):
        from fastconv.keras import saving
        saving.save_weights(self, filepath)

    def load_weights(self, filepath):
        from fastconv.keras import saving
        saving.load_weights(self, filepath)

    def to_config(self):
        """{"class_name", "config"}: what model_from_config rebuilds. A subclassed model is saved by
        its registered name, its get_config and the input shapes it was built for."""
        if self._subclassed:
            if not self.built:
                raise ValueError(f"model {self.name!r} has not been built yet: call it on data (or fit) first")
            return {"class_name": get_registered_name(type(self)), "config": self.get_config(),
                    "build_input_shape": [list(tensor.shape) for tensor in self.inputs]}
        return {"class_name": "Sequential" if isinstance(self, Sequential) else "Functional",
                "config": self.get_config()}

    def get_config(self):
        """The graph as JSON-able data: layers, and the nodes in execution order referring to them.
        A subclassed model returns its constructor arguments (Keras' automatic config) instead."""
        if self._subclassed:
            return Layer.get_config(self)
        layers = self.layers
        layer_index = {layer: i for i, layer in enumerate(layers)}
        node_index = {node: i for i, node in enumerate(self._nodes)}
        return {
            "name": self.name,
            "layers": [{"class_name": get_registered_name(type(layer)), "config": layer.get_config()} for layer in layers],
            "nodes": [{"layer": layer_index[node.layer], "inputs": [node_index[t.node] for t in node.inputs],
                       "multi_input": node.multi_input} for node in self._nodes],
            "inputs": as_given(self._input_ids, self._input_keys, self._given_input_keys, self._single_input),
            "outputs": as_given(self._output_ids, self._output_keys, self._given_output_keys, self._single_output),
        }


def as_given(items, keys, given_keys, single):
    """A list in a model's order (of its inputs or outputs, or of things about them) in the form they
    were given to the model: a dict (keys in the order given), one item, or a list."""
    if keys is not None:
        by_key = dict(zip(keys, items))
        return {key: by_key[key] for key in given_keys}
    return items[0] if single else list(items)


class Sequential(Model):
    """A linear stack of layers; it builds as soon as the input shape is known (or on first use)."""

    def __init__(self, layers=None, name=None, trainable=True):
        Layer.__init__(self, name=name or unique_name("sequential"), trainable=trainable)
        self._init_state()
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
                  "layers": [{"class_name": get_registered_name(type(layer)), "config": layer.get_config()}
                             for layer in self._layers]}
        if self._input is not None:
            config["input_shape"] = list(self._input.shape[1:])
        return config


class _CompiledMetrics:
    """The compiled metrics (not the loss tracker) as one object, as Keras 2's model.compiled_metrics."""

    def __init__(self, model):
        self._trainer = model._compiled_trainer()

    def update_state(self, y_true, y_pred, sample_weight=None):
        trainer = self._trainer
        ys = y_true if len(trainer.metrics) > 1 else [y_true]
        preds = y_pred if len(trainer.metrics) > 1 else [y_pred]
        for group, target, pred in zip(trainer.metrics, ys, preds):
            for metric in group:
                metric.update_state(target, pred, sample_weight)

    def result(self):
        return {metric.name: metric.result() for group in self._trainer.metrics for metric in group}

    def reset_state(self):
        for group in self._trainer.metrics:
            for metric in group:
                metric.reset_state()


def _index(value, limit, what):
    if type(value) is not int or not 0 <= value < limit:
        raise ValueError(f"{what} must be an int in [0, {limit}), got {value!r}")
    return value


def _layer_from_config(item, resolve):
    if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
        raise ValueError(f"each layer entry must be {{'class_name': ..., 'config': {{...}}}}, got {item!r}")
    class_name = item.get("class_name")
    cls = resolve(class_name) if isinstance(class_name, str) else None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"unknown layer class {class_name!r}: a custom layer must be registered with "
                         "@keras.saving.register_keras_serializable() or passed as custom_objects={...}")
    try:
        return cls.from_config(item["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"invalid config for layer class {class_name!r}: {error}") from None


def model_from_config(config, resolve):
    """Rebuild a model from {"class_name": "Sequential"|"Functional"|<registered model>, "config": ...}.

    `resolve(class_name)` gives the class for a name (built-in layers, then the user's registered or
    custom_objects classes; see object_registry): only those are ever instantiated, and every index
    into the graph is checked.
    """
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError("model config must be {'class_name': ..., 'config': {...}}")
    kind, body = config.get("class_name"), config["config"]
    if kind not in ("Sequential", "Functional"):
        return _subclassed_model_from_config(config, resolve)
    name = body.get("name")
    if not isinstance(name, str) or not isinstance(body.get("layers"), list):
        raise ValueError("model config needs a string 'name' and a list 'layers'")
    layers = [_layer_from_config(item, resolve) for item in body["layers"]]
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
        if isinstance(ref, dict):
            return {key: pick(value, what) for key, value in ref.items()}
        if isinstance(ref, list):
            return [tensors[_index(k, len(tensors), what)] for k in ref]
        return tensors[_index(ref, len(tensors), what)]

    return Model(inputs=pick(body.get("inputs"), "inputs"), outputs=pick(body.get("outputs"), "outputs"), name=name)


def _subclassed_model_from_config(config, resolve):
    """A registered Model subclass: from_config, then built for the saved input shapes so that the
    saved weights have variables to go into."""
    class_name = config.get("class_name")
    cls = resolve(class_name) if isinstance(class_name, str) else None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ValueError(f"unknown model class {class_name!r}: a subclassed model must be registered with "
                         "@keras.saving.register_keras_serializable() or passed as custom_objects={...}")
    shapes = config.get("build_input_shape")
    if not isinstance(shapes, list) or not shapes or not all(
            isinstance(shape, list) and all(d is None or (type(d) is int and d > 0) for d in shape) for shape in shapes):
        raise ValueError("a subclassed model's config needs build_input_shape, a list of input shapes")
    model = cls.from_config(config["config"])
    model.build([tuple(shape) for shape in shapes] if len(shapes) > 1 else tuple(shapes[0]))
    return model


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model saved with model.save (architecture, weights and, when possible, compile settings)."""
    from fastconv.keras import saving
    return saving.load_model(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
