"""The flow VAE's losses (Yeh et al., "Semantic Facial Expression Editing using Autoencoded Flow").

Pure functions of tensors: images [B, H, W, C] in [-1, 1], flows [B, H, W, 2] (x, y) in normalized
coordinates (a displacement of 1 is half the image side), latents [B, h, w, D]. Each term is a sum
over an example's values, averaged over the batch, so the paper's weights (lambda1 = 0.003 on the
KL term, lambda2 = 0.001 on the coherence term) are set against a summed reconstruction error.
"""

from __future__ import annotations

import math

import tensorflow as tf

from normalized_faces import warp

COHERENCE_WINDOW = 7  # the flow coherence's neighbourhood, 7 x 7


def gaussian_blur(images, sigma: float):
    """images [B, H, W, C] blurred by a Gaussian of standard deviation sigma pixels (separable,
    truncated at 3 sigma, edges mirrored so a constant image stays constant)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=images.dtype)) / (2 * sigma * sigma))
    taps /= tf.reduce_sum(taps)
    channels = images.shape[-1]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    columns = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, columns, [1, 1, 1, 1], "VALID")


def reconstruction_loss(target, output, weight=None, highpass_sigma: float = 0.0):
    """L2: sum of squared differences per example, batch mean. weight [B, H, W, 1] (optional): each
    pixel's squared differences multiplied by it (data.face_region: 1 on the face, 0 elsewhere).
    highpass_sigma > 0: the difference's Gaussian blur (that sigma, in pixels) subtracted first, so
    shading that varies slowly across the face (LFW pairs' lighting) costs nothing and the flow is
    paid for aligning features, not for moving bright pixels into shadows. (The blur is linear:
    the same as high-passing T and g separately.)"""
    difference = target - output
    if highpass_sigma > 0:
        difference -= gaussian_blur(difference, highpass_sigma)
    squared = tf.square(difference)
    if weight is not None:
        squared *= weight
    return tf.reduce_mean(tf.reduce_sum(squared, axis=[1, 2, 3]))


def kl_divergence(mean, log_variance):
    """KL(N(mean, exp(log_variance)) || N(0, 1)), summed over the latent, batch mean."""
    terms = -0.5 * (1.0 + log_variance - tf.square(mean) - tf.exp(log_variance))
    return tf.reduce_mean(tf.reduce_sum(terms, axis=list(range(1, len(mean.shape)))))


def coherence_loss(flow, target, alpha, window: int = COHERENCE_WINDOW):
    """sum over pixel pairs (i, j) within a window x window neighbourhood of
    |F_i - F_j|^2 exp(-(alpha |T_i - T_j|^2 + |i - j|^2)), per example, batch mean.

    Each unordered pair counts twice (as (i, j) and (j, i)), as the paper's sum over i and its
    neighbours j: computed once per unordered pair (the offsets d with dy > 0, or dy = 0 and dx > 0)
    and doubled, half the work of visiting every ordered pair. Distances |i - j| in pixels;
    `target` T the image the flow must reproduce, so the flow may change where T has an edge."""
    radius = window // 2
    height, width = tf.shape(flow)[1], tf.shape(flow)[2]
    target = tf.stop_gradient(target)  # the weights are data: no gradient flows through them
    total = 0.0
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue
            # Pixel i in [max(0, -d), size - max(0, d)), its neighbour j = i + d.
            y0, y1 = max(0, -dy), height - max(0, dy)
            x0, x1 = max(0, -dx), width - max(0, dx)
            flow_i, flow_j = flow[:, y0:y1, x0:x1], flow[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            target_i, target_j = target[:, y0:y1, x0:x1], target[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            weight = tf.exp(-(alpha * tf.reduce_sum(tf.square(target_i - target_j), -1) + float(dy * dy + dx * dx)))
            total += tf.reduce_sum(weight * tf.reduce_sum(tf.square(flow_i - flow_j), -1), axis=[1, 2])
    return tf.reduce_mean(2.0 * total)


def flow_pixel_scale(height, width, dtype=tf.float32):
    """Pixels per unit of a normalized-coordinate flow, (x, y) [2]: half the side less half a pixel,
    so a flow of 1 moves the centre of the first pixel to the centre of the middle."""
    size = tf.cast(tf.stack([width, height]), dtype)
    return (size - 1.0) / 2.0


def landmark_misses(flow, source_landmarks, target_landmarks):
    """t + F(t) - s per landmark, in pixels: [B, 68, 2]. flow [B, H, W, 2] (normalized), F bilinearly
    sampled at t; landmarks [B, 68, 2] (x, y) pixels of the same H x W.

    g(S, Z) samples S at p + F(p) (model.apply_flow), so where T shows landmark k the output shows
    S's pixel at t_k + F(t_k), which should be S's landmark k."""
    shape = tf.shape(flow)
    target_landmarks = tf.cast(target_landmarks, flow.dtype)
    at_target = warp.bilinear_sample(flow, target_landmarks[..., 0], target_landmarks[..., 1])
    at_target *= flow_pixel_scale(shape[1], shape[2], flow.dtype)
    return target_landmarks + at_target - tf.cast(source_landmarks, flow.dtype)


def landmark_loss(flow, source_landmarks, target_landmarks):
    """How far the flow is from carrying T's landmarks onto S's: sum over the 68 landmarks of
    |t + F(t) - s|^2 in pixels (landmark_misses), per example, batch mean. Landmarks do not change
    with the lighting, so this term pays for the geometry that an LFW pair's L2 confounds with
    shading (not in the paper, whose MULTI-PIE pairs share a session)."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(landmark_misses(flow, source_landmarks, target_landmarks)), [1, 2]))


def mask_target(target, output, beta):
    """The confidence mask's target y = exp(-|T - g(S, Z)|^2 / beta) per pixel: [B, H, W, 1]."""
    return tf.exp(-tf.reduce_sum(tf.square(target - output), axis=-1, keepdims=True) / beta)


def mask_loss(mask, target_confidence):
    """Per-pixel binary cross-entropy of the mask towards y, mean over pixels and batch."""
    epsilon = 1e-6
    mask = tf.clip_by_value(mask, epsilon, 1.0 - epsilon)
    return -tf.reduce_mean(target_confidence * tf.math.log(mask) + (1.0 - target_confidence) * tf.math.log(1.0 - mask))


def blend_weights(masks):
    """Normalized confidence masks for blending K warped photos (Algorithm 2): [K, B, H, W, 1] ->
    weights summing to one at every pixel (equal where every mask is zero)."""
    masks = tf.convert_to_tensor(masks)
    total = tf.reduce_sum(masks, axis=0, keepdims=True)
    count = tf.cast(tf.shape(masks)[0], masks.dtype)
    return tf.where(total > 0, masks / tf.maximum(total, 1e-12), tf.ones_like(masks) / count)
