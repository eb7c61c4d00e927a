"""Two terms against the pattern the identity loss grows in the texture.

Trained against a frozen FaceNet, the texture learns a fixed pattern (a thin dark line on every
cheek, a mottled background) that raises FaceNet's similarity without looking like anyone: the
recipe's dlib scores then swing from 12% to 81% across seeds while FaceNet stays at ~90% (the
seed study in docs/results). Both terms here make that pattern a bad bargain:

  jitter_chips            expectation over transformations: FaceNet sees each rendered chip under
                          its own random similarity (shift, scale, rotation, mirror) and a little
                          noise, so one pattern fixed in pixel position no longer lines up with
                          what FaceNet responds to from step to step;
  shared_residual_loss    the high-frequency part of (output - target) that is common to the whole
                          batch: what no single face's target asks for, by definition the shared
                          pattern. Each face's own detail averages out of the batch mean.
"""

from __future__ import annotations

import math

import tensorflow as tf

from normalized_faces import warp

# At jitter strength 1: up to +-5% scale, +-5 degrees, +-4% of the chip's side of shift; mirrored
# half the time; Gaussian noise of 1% of the range. Small enough that FaceNet's own embedding of
# an aligned photo barely moves (an aligned face is only roughly centred anyway).
MAX_SCALE = 0.05
MAX_ROTATION_DEGREES = 5.0
MAX_SHIFT = 0.04
NOISE = 0.01


def similarity_jitter_matrices(batch_size, size, strength=1.0, seed=None):
    """Random per-example similarity transforms about the chip's centre, output pixel (x, y) ->
    input point: [B, 2, 3] float32.

    Args:
      batch_size: B (a scalar tensor or int); size: the chip's side S in pixels.
      strength: scales every range (module constants at 1); mirrored half the time when > 0.
      seed: optional [2] int64 for stateless (reproducible) draws; None draws from the global generator.
    """
    seeds = None if seed is None else tf.random.experimental.stateless_split(seed, num=5)

    def uniform(index, limit):
        if seeds is None:
            return tf.random.uniform([batch_size], -limit, limit)
        return tf.random.stateless_uniform([batch_size], seeds[index], -limit, limit)

    scale = 1.0 + uniform(0, MAX_SCALE * strength)
    angle = uniform(1, MAX_ROTATION_DEGREES * strength * math.pi / 180.0)
    shift_x = uniform(2, MAX_SHIFT * strength * size)
    shift_y = uniform(3, MAX_SHIFT * strength * size)
    mirror = tf.where(uniform(4, 1.0) < 0.0, -1.0, 1.0)
    centre = (size - 1) / 2.0
    # input = centre + R(angle) diag(mirror, 1) (output - centre) / scale + shift
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos * mirror, -sin
    b0, b1 = sin * mirror, cos
    a2 = centre - (a0 + a1) * centre + shift_x
    b2 = centre - (b0 + b1) * centre + shift_y
    return tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2], axis=1), [-1, 2, 3])


def jitter_chips(chips, strength=1.0, seed=None):
    """Each chip under its own random similarity and a little noise (differentiable in `chips`).

    Args:
      chips: [B, S, S, C] float32 in [0, 1].
      strength: 0 returns `chips` unchanged; 1 the module's ranges.
      seed: optional [2] int64 for stateless (reproducible) draws; None draws from the global generator.
    Returns:
      [B, S, S, C] float32, clipped to [0, 1]. Points outside the chip take its nearest border pixel.
    """
    if not strength:
        return chips
    size = int(chips.shape[1])
    matrices = similarity_jitter_matrices(tf.shape(chips)[0], size, strength, seed)  # [B, 2, 3]
    y, x = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32), indexing="ij")
    pixels = tf.stack([x, y, tf.ones_like(x)], axis=-1)  # [S, S, 3]
    sampled_at = tf.einsum("bij,hwj->bhwi", matrices, pixels)  # [B, S, S, 2]
    # The project's own warp (exact bilinear gradients): out(p) = chip(p - flow(p)).
    moved = warp.dense_image_warp(chips, pixels[None, ..., :2] - sampled_at)
    if seed is None:
        noise = tf.random.normal(tf.shape(moved), stddev=NOISE * strength)
    else:
        noise_seed = tf.random.experimental.stateless_split(seed, num=6)[5]
        noise = tf.random.stateless_normal(tf.shape(moved), noise_seed, stddev=NOISE * strength)
    return tf.clip_by_value(moved + noise, 0.0, 1.0)


def _gaussian_kernel(sigma: float):
    radius = max(1, int(math.ceil(3 * sigma)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    return kernel / tf.reduce_sum(kernel)


def highpass(images, sigma=2.0):
    """images - Gaussian blur(images, sigma): [B, H, W, C] -> [B, H, W, C] (reflect padding)."""
    kernel = _gaussian_kernel(sigma)
    radius = (int(kernel.shape[0]) - 1) // 2
    channels = int(images.shape[-1])
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "VALID")
    return images - blurred


def shared_residual_loss(outputs, targets, sigma=2.0):
    """Mean absolute value of the batch mean of highpass(outputs - targets): a scalar.

    Args:
      outputs, targets: [B, H, W, C] float32 (textures in [0, 1]).
    A pattern every output carries and no target has survives the batch mean whole; each face's
    own residual detail shrinks in it like 1 / sqrt(B).
    """
    residual = highpass(tf.cast(outputs, tf.float32) - tf.cast(targets, tf.float32), sigma)
    return tf.reduce_mean(tf.abs(tf.reduce_mean(residual, axis=0)))
