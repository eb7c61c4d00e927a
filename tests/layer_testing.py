"""One test routine for every Keras layer of the package (after keras-hub's `run_layer_test`).

`run_layer_test(cls, init_kwargs, inputs, expected_output_shape, ...)` checks, in order:
  - config round trip: get_config -> from_config -> same config, and the registered name
    deserializes through keras.saving (what model_config.json relies on);
  - eager call: the output's shape, and compute_output_shape agrees with it;
  - symbolic call on keras.Input with an unknown batch: the output's shape;
  - weight counts (trainable, non-trainable);
  - two fit steps of a functional model around the layer: a finite loss and every trainable
    weight moved (a weight the gradient never reaches would stay put; two steps, because a
    zero-initialized output layer passes no gradient to the layers below it on the first);
  - mixed precision: built under "mixed_bfloat16", every sublayer carries that policy, variables
    are float32, and the output dtype is the compute dtype (or float32 for layers that promise it).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _as_tuple(inputs):
    return tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)


def _sublayers(layer):
    return [sub for sub in layer._flatten_layers(include_self=False)]


def run_layer_test(
    layer_cls,
    init_kwargs: dict,
    inputs,
    expected_output_shape: tuple,
    expected_num_trainable_weights: int,
    expected_num_non_trainable_weights: int = 0,
    run_training_check: bool = True,
    run_mixed_precision_check: bool = True,
    float32_output: bool = False,
):
    """Runs the checks in the module docstring; `inputs` is an array or a tuple of arrays (the
    layer's positional call arguments), `expected_output_shape` includes the batch."""
    inputs = tuple(np.asarray(x, np.float32) for x in _as_tuple(inputs))

    # Config round trip, directly and through the registered name.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    assert layer_cls.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    # Eager call.
    output = layer(*[tf.constant(x) for x in inputs])
    assert tuple(output.shape) == tuple(expected_output_shape), (output.shape, expected_output_shape)
    computed = (
        layer.compute_output_shape(*[x.shape for x in inputs])
        if len(inputs) > 1
        else layer.compute_output_shape(inputs[0].shape)
    )
    assert tuple(computed) == tuple(expected_output_shape), (computed, expected_output_shape)

    # Weight counts.
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [w.path for w in layer.trainable_weights]
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, [
        w.path for w in layer.non_trainable_weights
    ]

    # Symbolic call, batch unknown.
    symbolic_inputs = [keras.Input(shape=x.shape[1:], batch_size=None) for x in inputs]
    symbolic = layer_cls(**init_kwargs)(*symbolic_inputs)
    assert tuple(symbolic.shape[1:]) == tuple(expected_output_shape[1:]), (symbolic.shape, expected_output_shape)

    if run_training_check:
        fresh = layer_cls(**init_kwargs)
        model_inputs = [keras.Input(shape=x.shape[1:]) for x in inputs]
        model = keras.Model(model_inputs, fresh(*model_inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [w.numpy().copy() for w in fresh.trainable_weights]
        target = np.full(expected_output_shape, 0.5, np.float32)
        history = model.fit(
            list(inputs) if len(inputs) > 1 else inputs[0], target, batch_size=len(target), epochs=2, verbose=0
        )
        assert np.isfinite(history.history["loss"][-1])
        still = [w.path for w, b in zip(fresh.trainable_weights, before) if np.array_equal(w.numpy(), b)]
        assert not still, f"weights the gradient never reached: {still}"

    if run_mixed_precision_check:
        mixed = layer_cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
        output = mixed(*[tf.constant(x) for x in inputs])
        assert output.dtype == (tf.float32 if float32_output else tf.bfloat16), output.dtype
        for sub in _sublayers(mixed):
            assert sub.dtype_policy.name == "mixed_bfloat16", f"{sub.name} has policy {sub.dtype_policy.name}"
        for weight in mixed.weights:
            assert weight.dtype == "float32", (weight.path, weight.dtype)
    return layer
