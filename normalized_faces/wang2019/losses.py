"""Wang (2019)'s losses as pure TensorFlow functions. Points are [B, 68, 2] (x, y) pixels in dlib's
68-point layout; images [B, H, W, C] in [0, 1]; masks [B, H, W, 1] in [0, 1]. Each returns a scalar
(the mean over the batch) unless it says otherwise.

Where the thesis is ambiguous (the issue states the choices): the geometry term is a cosine
*distance*, 1 - cos, between the L1 landmark-distance matrices, and the symmetry term takes the
absolute value of each pair's offset from the centre line.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from normalized_faces import landmarks as lm
from normalized_faces import warp

# dlib indices the thesis trusts on generated faces: chin, nose tip, eye corners, mouth corners and
# the lips' midpoints (outer and inner).
RELIABLE_LANDMARKS = (8, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 62, 64, 66)
# The thesis's weights of the landmark terms.
GEOMETRY_WEIGHT, SYMMETRY_WEIGHT, TILT_WEIGHT, EXPRESSION_WEIGHT = 160.0, 1.0, 1.0, 1.0
# Left/right pairs (i, MIRROR[i]) with i < MIRROR[i]: each pair once, midline points excluded.
MIRROR_PAIRS = np.array([(i, int(j)) for i, j in enumerate(lm.MIRROR) if i < j], np.int32)


def l1_distance_matrix(points):
    """D_ij = |L_i - L_j|_1: [B, N, 2] -> [B, N, N]."""
    points = tf.convert_to_tensor(points, tf.float32)
    return tf.reduce_sum(tf.abs(points[:, :, None, :] - points[:, None, :, :]), axis=-1)


def geometry_loss(input_points, output_points):
    """1 - cosine similarity of the two faces' L1 distance matrices: 0 for the same shape at any
    scale, so it constrains proportions (identity), not size or position."""
    a = tf.reshape(l1_distance_matrix(input_points), [tf.shape(input_points)[0], -1])
    b = tf.reshape(l1_distance_matrix(output_points), [tf.shape(output_points)[0], -1])
    cosine = tf.reduce_sum(a * b, axis=-1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + 1e-12)
    return tf.reduce_mean(1.0 - cosine)


def symmetry_loss(points, width):
    """Mean over left/right pairs of |(x_left + x_right) / 2 - centre x|: a frontal face is
    symmetric about the image's vertical centre line (pixel-index centre (width - 1) / 2)."""
    points = tf.convert_to_tensor(points, tf.float32)
    left, right = tf.gather(points, MIRROR_PAIRS[:, 0], axis=1), tf.gather(points, MIRROR_PAIRS[:, 1], axis=1)
    centre = (tf.cast(width, tf.float32) - 1.0) / 2.0
    return tf.reduce_mean(tf.abs((left[..., 0] + right[..., 0]) / 2.0 - centre))


def tilt_loss(points):
    """Mean over left/right pairs of |y_left - y_right|: no roll."""
    points = tf.convert_to_tensor(points, tf.float32)
    left, right = tf.gather(points, MIRROR_PAIRS[:, 0], axis=1), tf.gather(points, MIRROR_PAIRS[:, 1], axis=1)
    return tf.reduce_mean(tf.abs(left[..., 1] - right[..., 1]))


def expression_loss(points):
    """|y61 - y67| + |y62 - y66| + |y63 - y65|: the inner lips meet (a closed, neutral mouth)."""
    points = tf.convert_to_tensor(points, tf.float32)
    upper, lower = tf.gather(points, [61, 62, 63], axis=1), tf.gather(points, [67, 66, 65], axis=1)
    return tf.reduce_mean(tf.reduce_sum(tf.abs(upper[..., 1] - lower[..., 1]), axis=-1))


def landmark_loss(input_points, output_points, width):
    """The thesis's weighted sum: 160 geometry + symmetry + tilt + expression (on the output)."""
    return (
        GEOMETRY_WEIGHT * geometry_loss(input_points, output_points)
        + SYMMETRY_WEIGHT * symmetry_loss(output_points, width)
        + TILT_WEIGHT * tilt_loss(output_points)
        + EXPRESSION_WEIGHT * expression_loss(output_points)
    )


def compose(noisy, mask):
    """F_O = W * F_N + (1 - W) * white: the attention mask keeps the face, whitens the rest."""
    return mask * noisy + (1.0 - mask) * tf.ones_like(noisy)


def mask_loss(mask, power=1.0):
    """mean(W^p) (keep the mask small: only what the face needs) + total variation
    mean((W[i+1, j] - W[i, j])^2 + (W[i, j+1] - W[i, j])^2) (keep it smooth)."""
    mask = tf.convert_to_tensor(mask, tf.float32)
    down = tf.square(mask[:, 1:, :-1] - mask[:, :-1, :-1])
    across = tf.square(mask[:, :-1, 1:] - mask[:, :-1, :-1])
    return tf.reduce_mean(tf.pow(mask, power)) + tf.reduce_mean(down + across)


def lsgan_generator_loss(fake_scores):
    """L_G = E[(D(G) - 1)^2]."""
    return tf.reduce_mean(tf.square(tf.cast(fake_scores, tf.float32) - 1.0))


def lsgan_discriminator_loss(real_scores, fake_scores):
    """L_D = E[(D(x) - 1)^2] + E[(D(G) + 1)^2]."""
    real, fake = tf.cast(real_scores, tf.float32), tf.cast(fake_scores, tf.float32)
    return tf.reduce_mean(tf.square(real - 1.0)) + tf.reduce_mean(tf.square(fake + 1.0))


def canonical_reliable_points(size, interocular=lm.INTEROCULAR_DISTANCE):
    """Where the 14 reliable landmarks are put before the texture loss compares pixels: the
    template's, in a size x size frame."""
    return lm.template_landmarks(size, interocular)[list(RELIABLE_LANDMARKS)].astype(np.float32)


def masked_texture_loss(input_image, output_image, input_points, output_points, mask, canonical, mask_gradient=False):
    """sum of W* |I* - O*| over each image's pixels and channels, averaged over the batch: the input
    and the output each warped (spline warp, phi(r) = r) so that their 14 reliable landmarks land on
    `canonical` [14, 2]; the mask is warped with the output (it lives in the output's frame).

    A sum, as the thesis writes it, and not a mean: the other terms' weights (160 for the geometry,
    1 for the rest) are set against a sum. mask_gradient: whether the weighting W gets this term's
    gradient (see below). With a mean (1/76,800 of it at 160 px) the landmark terms
    dominated, and their gradients through the regressor drove a tiny model's output to saturated
    colours within 100 steps."""
    index = list(RELIABLE_LANDMARKS)
    batch = tf.shape(input_image)[0]
    target = tf.tile(tf.convert_to_tensor(canonical, tf.float32)[None], [batch, 1, 1])

    def to_canonical(image, points):
        return warp.sparse_image_warp(image, tf.gather(points, index, axis=1), target, num_boundary_points=2)[0]

    aligned_input = to_canonical(tf.cast(input_image, tf.float32), input_points)
    aligned_output_and_mask = to_canonical(tf.concat([output_image, mask], axis=-1), output_points)
    aligned_output, aligned_mask = aligned_output_and_mask[..., :-1], aligned_output_and_mask[..., -1:]
    # The mask weights where pixels are compared. Taken literally (mask_gradient=True) W * |I* - O*|
    # is smallest at W = 0, an all-white output: this is what whitens the background, where the
    # photo cannot be predicted from identity, and only the identity and landmark terms hold the face
    # against it (with their thesis weights the tiny config went all white within 150 steps).
    # Stopped, the mask learns only through O* = W F_N + (1 - W) white, which asks it to show the
    # photo's background rather than whiten it.
    weight = aligned_mask if mask_gradient else tf.stop_gradient(aligned_mask)
    return tf.reduce_mean(tf.reduce_sum(weight * tf.abs(aligned_input - aligned_output), axis=[1, 2, 3]))
