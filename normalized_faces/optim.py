"""Adam with TensorFlow's fused update kernel: the same mathematics as keras.optimizers.Adam, one pass.

The paper's texture decoder starts with a fully connected layer to 14 x 14 x 256: with
feature_dim 1024 that is 51M weights, and Keras's Adam updates them with about ten elementwise
TensorFlow ops per variable (each a pass over 51M floats). On a 2-core CPU that took ~170 ms of a
~600 ms training step (benchmarks/train_bench.py). `ResourceApplyAdam` does the same update in one
multithreaded pass (~55 ms):

    m <- m + (g - m)(1 - beta_1);  v <- v + (g^2 - v)(1 - beta_2)
    variable <- variable - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

exactly Keras's Adam (tests/test_training.py compares them step by step). Its slots and checkpoint
layout are Keras's, so runs written with either load with the other.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _handle(variable):
    # Keras variables wrap a tf.Variable (under a strategy, the component being updated).
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


@keras.saving.register_keras_serializable(package="normalized_faces")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose per-variable update is TensorFlow's fused ResourceApplyAdam.

    Same arguments as keras.optimizers.Adam except amsgrad (not supported by the fused kernel).
    """

    def __init__(self, *args, amsgrad=False, **kwargs):
        if amsgrad:
            raise ValueError("FusedAdam does not support amsgrad; use keras.optimizers.Adam")
        super().__init__(*args, amsgrad=False, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow":  # pragma: no cover - this project runs on TensorFlow
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
