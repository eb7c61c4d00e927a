"""One interface for frozen face-recognition networks.

An encoder is a Keras layer. Called on a batch of face images (float32 RGB in [0, 1], [B, H, W, 3])
it returns a dict:

  features   [B, F]  the lowest layer that is not spatially varying: what the decoder reads;
  embedding  [B, E]  the L2-normalized identity embedding: what the identity loss and evaluation
                     compare (cosine similarity; Euclidean distance between unit vectors);

plus whatever else the network has (dlib's raw descriptor). `encoder.threshold` is the published
verification threshold, with the distance it applies to and its source.

By default the input is an aligned face crop in this project's frame (data prep's alignment:
eyes level, 55 px apart in 224 x 224, `landmarks.template_landmarks`); the encoder re-frames it to
the crop its network was trained on with a fixed, differentiable similarity resample. With
`native_input=True` it takes the network's own chips (dlib's 150 x 150 `get_face_chip`,
FaceNet's 160 x 160) unchanged, so parity with the original can be tested on identical pixels.

Encoders are frozen (no trainable weights, batch norm in inference mode) but differentiable with
respect to the input image: the identity loss backpropagates through them into the rendered face.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import landmarks as lm
from normalized_faces import warp

log = logging.getLogger(__name__)


_DISTANCES = {
    "euclidean": lambda d: np.sqrt((d * d).sum(axis=-1)),
    "squared_euclidean": lambda d: (d * d).sum(axis=-1),
}


@dataclasses.dataclass(frozen=True)
class VerificationThreshold:
    """Two faces are the same person when distance(output_a, output_b) < value."""

    value: float
    output: str  # which output the distance is taken on ("embedding", "descriptor")
    distance: str  # "euclidean" or "squared_euclidean"
    source: str  # where the number is published

    def distances(self, a, b) -> np.ndarray:
        """Distances between two batches of `output` vectors ([..., D] each)."""
        return _DISTANCES[self.distance](np.asarray(a, np.float64) - np.asarray(b, np.float64))

    def same_person(self, a, b) -> np.ndarray:
        return self.distances(a, b) < self.value


def check_images(images, name="images"):
    """Rejects input that cannot be face crops, naming what was expected. Returns float32 [B, H, W, 3]."""
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise TypeError(
            f"{name} must be float32 RGB in [0, 1], got dtype {images.dtype.name}"
            + (" (for uint8 images divide by 255)" if images.dtype == tf.uint8 else "")
        )
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"{name} must be a batch [B, H, W, 3] of RGB images, got shape {images.shape}")
    if images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) in the last axis, got shape {images.shape}")
    return tf.cast(images, tf.float32)


def assert_unit_range(images, name="images", slack=0.25):
    """A runtime check that values are roughly in [0, 1] (catches 0..255 input).

    `slack` admits rendered faces that overshoot a little. A no-op under XLA.
    """
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    message = f"{name} must be RGB in [0, 1] (values outside [{-slack}, {1 + slack}] found; 0..255 input must be divided by 255)"
    with tf.control_dependencies(
        [
            tf.debugging.assert_greater_equal(low, tf.cast(-slack, images.dtype), message=message),
            tf.debugging.assert_less_equal(high, tf.cast(1 + slack, images.dtype), message=message),
        ]
    ):
        return tf.identity(images)


def similarity_from_points(source, target):
    """Least-squares similarity (rotation, uniform scale, translation) mapping source onto target.

    Args:
      source, target: [N, 2] (x, y) points.

    Returns:
      [2, 3] matrix M with target ~= M @ [x, y, 1].
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    # Complex-number form: t ~= z s with z = a + ib.
    denominator = (s**2).sum()
    a = (s * t).sum() / denominator
    b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / denominator
    rotation_scale = np.array([[a, -b], [b, a]])
    return np.concatenate([rotation_scale, (mu_t - rotation_scale @ mu_s)[:, None]], axis=1)


def resample_similarity(images, chip_to_image, chip_size):
    """Crops `chip_size` x `chip_size` chips: chip pixel p samples image at chip_to_image @ [p, 1].

    Differentiable with respect to `images` (bilinear sampling, border clamped).

    Args:
      images: [B, H, W, C] float.
      chip_to_image: [2, 3] matrix (chip (x, y) -> image (x, y)).

    Returns:
      [B, chip_size, chip_size, C].
    """
    ys, xs = np.mgrid[0:chip_size, 0:chip_size].astype(np.float64)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.asarray(chip_to_image).T  # [S, S, 2]
    batch = tf.shape(images)[0]
    x = tf.tile(tf.constant(points[None, ..., 0], images.dtype), [batch, 1, 1])
    y = tf.tile(tf.constant(points[None, ..., 1], images.dtype), [batch, 1, 1])
    return warp.bilinear_sample(images, x, y)


class FaceEncoder(keras.layers.Layer):
    """Base class: a frozen network plus the input handling shared by every encoder.

    Subclasses set `native_size`, `threshold`, and implement `chip_to_frame(reference_landmarks)`
    (the similarity from their chip to a frame holding a face with these 68 landmarks) and
    `_run_network` (chips in [0, 1] at native size -> dict with "features" and "embedding").
    """

    native_size: int
    encoder_name: str  # the name get_encoder builds it by
    threshold: VerificationThreshold

    def __init__(self, native_input=False, aligned_size=lm.ALIGNED_SIZE, check_range=True, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.native_input = bool(native_input)
        self.aligned_size = int(aligned_size)
        self.check_range = bool(check_range)
        self._aligned_chip_matrix = None

    def weights_file(self) -> str:
        """The file the pretrained weights were read from (what a cache of outputs is keyed to)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        """A model's config may come from another machine (a shipped or copied model_config.json):
        a recorded `weights_path` that does not exist here falls back to the encoder's default
        weights (FaceNet: the set-up command's cache, checked against the published sha256; dlib:
        the face_recognition_models package's file), with a warning naming the path."""
        config = dict(config)
        path = config.get("weights_path")
        if path and not os.path.exists(os.path.expanduser(path)):
            log.warning(
                "%s: %s (recorded in the model's config) is not on this machine; using the default weights",
                cls.__name__,
                path,
            )
            config["weights_path"] = None
        return cls(**config)

    def chip_to_frame(self, reference_landmarks) -> np.ndarray:
        """[2, 3] matrix: frame (x, y) = M @ [chip x, chip y, 1] for a face with these landmarks."""
        raise NotImplementedError

    def _chip_to_aligned(self) -> np.ndarray:
        # Aligned crops all share the template's framing, so one fixed matrix serves every input.
        if self._aligned_chip_matrix is None:
            self._aligned_chip_matrix = self.chip_to_frame(lm.template_landmarks(self.aligned_size))
        return self._aligned_chip_matrix

    def native_chip(self, photo, landmarks) -> np.ndarray:
        """The network's own chip of the face with these 68 landmarks in `photo` (any size).

        Args:
          photo: [H, W, 3] RGB, uint8 or float in [0, 1].
          landmarks: [68, 2] (x, y) in the photo.

        Returns:
          [native_size, native_size, 3] float32 in [0, 1], for an encoder with native_input=True.
        """
        photo = np.asarray(photo)
        image = photo.astype(np.float32) / (255.0 if photo.dtype == np.uint8 else 1.0)
        matrix = self.chip_to_frame(np.asarray(landmarks, np.float64))
        return resample_similarity(image[None], matrix, self.native_size)[0].numpy()

    def _run_network(self, chips):
        raise NotImplementedError

    def aligned_chip_matrix(self) -> np.ndarray:
        """[2, 3]: aligned-crop (x, y) = M @ [chip u, chip v, 1], how aligned crops are framed into chips."""
        return self._chip_to_aligned()

    def encode_chips(self, chips):
        """The network on native chips [B, native_size, native_size, 3] float32 in [0, 1].

        What `call` runs after re-framing an aligned crop; for callers that make the chips
        themselves (the identity loss renders them straight from the texture, warp.sparse_image_warp_chip).
        """
        return self._run_network(chips)

    def to_chips(self, images):
        """Aligned crops [B, aligned_size, aligned_size, 3] -> native chips (or native chips unchanged)."""
        if self.native_input:
            return images
        return resample_similarity(images, self._chip_to_aligned(), self.native_size)

    def call(self, images):
        images = check_images(images)
        expected = self.native_size if self.native_input else self.aligned_size
        kind = "native chips" if self.native_input else "aligned face crops"
        if tuple(images.shape[1:3]) != (None, None) and tuple(images.shape[1:3]) != (expected, expected):
            raise ValueError(
                f"{self.name} expects {kind} of {expected} x {expected} pixels, got shape {images.shape}"
                + (
                    ""
                    if self.native_input
                    else f" (pass native_input=True for {self.native_size} x {self.native_size} chips)"
                )
            )
        if self.check_range:
            images = assert_unit_range(images)
        return self._run_network(self.to_chips(images))

    def get_config(self):
        return {
            **super().get_config(),
            "native_input": self.native_input,
            "aligned_size": self.aligned_size,
            "check_range": self.check_range,
        }
