"""A small CNN that regresses dlib's 68 landmarks from an aligned face, differentiably.

Wang (2019) constrains the geometry of a generated face with losses on landmarks detected on it;
the thesis used PRNet (3-D, differentiable), which cannot be had here. This is the substitute:
trained on LFW with dlib's landmarks as labels (experiments/landmark_regressor.py, which also
measures it against dlib on the test people), frozen wherever it is used, shipped with the package
(normalized_faces/pretrained/landmark_regressor.*). Its landmarks are 2-D, where PRNet's are 3-D.

  aligned faces [B, S, S, 3] in [0, 1] -> bilinear resize to input_size -> five stages of
  (3 x 3 conv, 3 x 3 stride-2 conv, ReLU) -> flatten -> dense + ReLU -> dense (zero-initialized)
  -> offsets from the mean landmarks -> [B, 68, 2] (x, y) pixels of the S x S frame
"""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import landmarks as lm

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
WEIGHTS_FILE = "landmark_regressor.npz"
CONFIG_FILE = "landmark_regressor.json"  # the layer's config and the provenance of its weights


@keras.saving.register_keras_serializable(package="normalized_faces")
class LandmarkRegressor(keras.layers.Layer):
    """Aligned faces [B, S, S, 3] in [0, 1] -> 68 landmarks [B, 68, 2] in pixels of the S frame.

    Args:
      mean_landmarks: [68, 2] the untrained regressor's answer (offsets start at zero).
      image_size: S, the side of the aligned faces it is given (data prep: 224).
      input_size: the side it looks at after resizing (smaller is faster; 112 by default).
      channels: output channels of the five stages.
      hidden: width of the dense layer before the output.
      **kwargs: Keras layer arguments; the dtype policy reaches every sublayer. The output is
        float32 whatever the policy (landmarks feed losses and the warp).
    """

    def __init__(
        self,
        mean_landmarks=None,
        image_size=lm.ALIGNED_SIZE,
        input_size=112,
        channels=(32, 64, 96, 128, 128),
        hidden=256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.input_size = int(input_size)
        self.channels = tuple(int(c) for c in channels)
        self.hidden = int(hidden)
        if mean_landmarks is None:
            mean_landmarks = lm.template_landmarks(self.image_size)
        self.mean_landmarks = np.asarray(mean_landmarks, np.float32).reshape(lm.NUM_LANDMARKS, 2)
        policy = self.dtype_policy
        for i, c in enumerate(self.channels):  # one attribute per layer (checkpoints follow attributes)
            setattr(self, f"conv_{i}", keras.layers.Conv2D(c, 3, padding="same", activation="relu", dtype=policy))
            setattr(
                self, f"down_{i}", keras.layers.Conv2D(c, 3, strides=2, padding="same", activation="relu", dtype=policy)
            )
        self.flatten = keras.layers.Flatten(dtype=policy)
        self.dense = keras.layers.Dense(self.hidden, activation="relu", name="dense", dtype=policy)
        self.offsets = keras.layers.Dense(
            lm.NUM_LANDMARKS * 2, kernel_initializer="zeros", name="offsets", dtype=policy
        )

    def _stages(self):
        return [(getattr(self, f"conv_{i}"), getattr(self, f"down_{i}")) for i in range(len(self.channels))]

    def build(self, input_shape):
        shape = (input_shape[0], self.input_size, self.input_size, 3)
        for conv, down in self._stages():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            down.build(shape)
            shape = down.compute_output_shape(shape)
        flat = int(np.prod(shape[1:]))
        self.dense.build((input_shape[0], flat))
        self.offsets.build((input_shape[0], self.hidden))

    def call(self, images):
        x = tf.image.resize(tf.cast(images, tf.float32), [self.input_size, self.input_size], method="bilinear")
        x = tf.cast((x - 0.5) * 2.0, self.compute_dtype)
        for conv, down in self._stages():
            x = down(conv(x))
        offsets = self.offsets(self.dense(self.flatten(x)))
        # Offsets are learned in units of the frame (well scaled for the optimizer), then in pixels.
        offsets = tf.reshape(tf.cast(offsets, tf.float32), [-1, lm.NUM_LANDMARKS, 2]) * float(self.image_size)
        return tf.constant(self.mean_landmarks)[None] + offsets

    def compute_output_shape(self, input_shape):
        return (input_shape[0], lm.NUM_LANDMARKS, 2)

    def get_config(self):
        return {
            **super().get_config(),
            "mean_landmarks": self.mean_landmarks.tolist(),
            "image_size": self.image_size,
            "input_size": self.input_size,
            "channels": list(self.channels),
            "hidden": self.hidden,
        }


def normalized_mean_error(predicted, reference) -> np.ndarray:
    """Per face: the mean point distance / the reference's interocular distance (eye centres), [B]."""
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    right, left = lm.eye_centers(reference)
    interocular = np.linalg.norm(left - right, axis=-1)
    return np.linalg.norm(predicted - reference, axis=-1).mean(axis=-1) / interocular


def is_available(directory=PRETRAINED_DIR) -> bool:
    directory = pathlib.Path(directory)
    return (directory / WEIGHTS_FILE).exists() and (directory / CONFIG_FILE).exists()


def load_pretrained(directory=PRETRAINED_DIR) -> LandmarkRegressor:
    """The shipped regressor, built, weights loaded and frozen. FileNotFoundError if absent."""
    directory = pathlib.Path(directory)
    if not is_available(directory):
        raise FileNotFoundError(
            f"no landmark regressor in {directory} (expected {WEIGHTS_FILE} and {CONFIG_FILE}): "
            "train one with python -m experiments.landmark_regressor"
        )
    description = json.loads((directory / CONFIG_FILE).read_text())
    regressor = LandmarkRegressor.from_config(description["config"])
    size = regressor.image_size
    regressor(tf.zeros([1, size, size, 3]))
    with np.load(directory / WEIGHTS_FILE) as stored:
        names = [f"{i:03d}" for i in range(len(regressor.weights))]
        if sorted(stored.files) != names:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} has {len(stored.files)} arrays; the regressor has {len(names)}"
            )
        for name, weight in zip(names, regressor.weights):
            if tuple(stored[name].shape) != tuple(weight.shape):
                raise ValueError(
                    f"{directory / WEIGHTS_FILE}: array {name} is {stored[name].shape}, want {weight.shape}"
                )
            weight.assign(stored[name].astype(np.float32))
    regressor.trainable = False
    return regressor


def save_pretrained(regressor: LandmarkRegressor, provenance: dict, directory=PRETRAINED_DIR) -> pathlib.Path:
    """Writes the regressor's weights (float16, in weight order) and its config + provenance."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {f"{i:03d}": w.numpy().astype(np.float16) for i, w in enumerate(regressor.weights)}
    with open(directory / WEIGHTS_FILE, "wb") as file:
        np.savez_compressed(file, **weights)
    description = {"config": regressor.get_config(), "provenance": provenance}
    (directory / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n")
    return directory / WEIGHTS_FILE
