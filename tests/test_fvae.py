"""The flow VAE's parts (normalized_faces/fvae): the flow sampler, the losses on hand-computable
inputs, Algorithm 1's steps, the blending weights, and the model's two training phases."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from normalized_faces.fvae import losses
from normalized_faces.fvae import model as fvae


def test_flow_sampler_reproduces_a_known_translation():
    """A constant flow of k pixels (in normalized units) samples the source k pixels away:
    output[y, x] = source[y + ky, x + kx] inside, the border value beyond it."""
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, [2, 16, 20, 3]).astype(np.float32)
    kx, ky = 3, -2
    flow = np.zeros([2, 16, 20, 2], np.float32)
    flow[..., 0] = kx * 2.0 / (20 - 1)
    flow[..., 1] = ky * 2.0 / (16 - 1)
    out = fvae.apply_flow(tf.constant(source), tf.constant(flow)).numpy()
    np.testing.assert_allclose(out[:, 2:, : 20 - kx], source[:, : 16 + ky, kx:], atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0], source[:, 0, kx], atol=1e-5)  # above the image: its top row


def test_flow_is_resolution_free():
    flow = tf.fill([1, 8, 8, 2], 0.25)
    big = fvae.upsample_flow(flow, 32, 48)
    assert big.shape == (1, 32, 48, 2)
    np.testing.assert_allclose(big.numpy(), 0.25)


def test_kl_divergence_by_hand():
    zeros = tf.zeros([2, 4, 4, 8])
    assert float(losses.kl_divergence(zeros, zeros)) == pytest.approx(0.0)
    # mean 1, variance 1: 0.5 per dimension; 128 dimensions.
    assert float(losses.kl_divergence(tf.ones([2, 4, 4, 8]), zeros)) == pytest.approx(64.0)
    # mean 0, log-variance log 2: 0.5 (2 - 1 - log 2) per dimension.
    log2 = tf.fill([1, 4, 4, 8], float(np.log(2.0)))
    assert float(losses.kl_divergence(tf.zeros_like(log2), log2)) == pytest.approx(64.0 * (1 - np.log(2.0)))


def test_reconstruction_loss_is_a_per_example_sum():
    target = tf.zeros([2, 4, 4, 3])
    output = tf.concat([tf.fill([1, 4, 4, 3], 0.5), tf.zeros([1, 4, 4, 3])], axis=0)
    assert float(losses.reconstruction_loss(target, output)) == pytest.approx(48 * 0.25 / 2)


def test_coherence_of_a_constant_flow_is_zero_and_one_odd_pixel_by_hand():
    target = tf.zeros([1, 12, 12, 3])
    assert float(losses.coherence_loss(tf.fill([1, 12, 12, 2], 0.3), target, alpha=1.0)) == pytest.approx(0.0)
    flow = np.zeros([1, 12, 12, 2], np.float32)
    flow[0, 6, 5, 0] = 1.0  # one pixel, 3+ pixels from every border, moves by (1, 0)
    # Each of its 48 neighbours d pairs with it twice (i -> j and j -> i): 2 * sum_d exp(-|d|^2).
    ring = np.exp(-(np.arange(-3, 4) ** 2.0))
    expected = 2 * (ring.sum() ** 2 - 1)
    assert float(losses.coherence_loss(tf.constant(flow), target, alpha=1.0)) == pytest.approx(expected, rel=1e-5)
    # An edge in the target between the pixel and everything else: with a large alpha, the flow may change there.
    edged = np.zeros([1, 12, 12, 3], np.float32)
    edged[0, 6, 5] = 1.0
    assert float(losses.coherence_loss(tf.constant(flow), tf.constant(edged), alpha=50.0)) < 1e-6 * expected


def test_algorithm_1_takes_k_equal_steps_to_the_target_expression():
    latent = tf.random.normal([2, 4, 4, 8], seed=1)
    source_mean, target_mean = tf.zeros([4, 4, 8]), tf.ones([4, 4, 8])
    steps = fvae.edit_latents(latent, source_mean, target_mean, steps=4)
    assert steps.shape == (4, 2, 4, 4, 8)
    for i in range(4):
        np.testing.assert_allclose(steps[i].numpy(), latent.numpy() + (i + 1) / 4, atol=1e-6)


def test_blend_weights_sum_to_one():
    masks = tf.constant(np.random.default_rng(0).uniform(0, 1, [3, 2, 8, 8, 1]), tf.float32)
    masks = tf.concat([masks[:, :, :4], tf.zeros([3, 2, 4, 8, 1])], axis=2)  # half the pixels: no mask anywhere
    weights = losses.blend_weights(masks).numpy()
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(weights[:, :, 4:], 1 / 3, atol=1e-6)


def test_mask_target_and_loss():
    target = tf.zeros([1, 2, 2, 3])
    output = tf.constant([[[[0.0] * 3, [1.0] * 3], [[0.0] * 3, [0.0] * 3]]])
    confidence = losses.mask_target(target, output, beta=3.0).numpy()[0, ..., 0]
    np.testing.assert_allclose(confidence, [[1.0, np.exp(-1.0)], [1.0, 1.0]], rtol=1e-6)
    # The cross-entropy is smallest at mask = target.
    at_target = float(losses.mask_loss(tf.constant(confidence)[None, ..., None], confidence[None, ..., None]))
    off = float(losses.mask_loss(tf.fill([1, 2, 2, 1], 0.5), confidence[None, ..., None]))
    assert at_target < off


@pytest.mark.parametrize("output_kind", ["flow", "rgb"])
def test_model_shapes_and_two_phases(output_kind):
    """The paper's latent (4 x 4 x 32 * base) and output shapes; phase 1 moves everything but the mask
    decoder and lowers the loss on a fixed pair; phase 2 moves only the mask decoder."""
    keras.utils.set_random_seed(0)
    model = fvae.FlowVAE(base_channels=4, output_kind=output_kind)
    rng = np.random.default_rng(0)
    source = tf.constant(rng.uniform(-1, 1, [2, 128, 128, 3]), tf.float32)
    target = tf.constant(np.roll(source.numpy(), 2, axis=2))
    batch = {"source": source, "target": target}
    out = model(batch)
    assert out["mean"].shape == (2, 4, 4, 128) and out["output"].shape == (2, 128, 128, 3)
    assert out["mask"].shape == (2, 128, 128, 1)
    assert ("flow" in out) == (output_kind == "flow")
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipvalue=5.0))
    mask_before = [v.numpy().copy() for v in model.mask_decoder.trainable_variables]
    first = model.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True)["reconstruction_loss"]
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(15), verbose=0)
    after = model.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True)["reconstruction_loss"]
    assert after < first
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(mask_before, model.mask_decoder.trainable_variables))

    encoder_before = [v.numpy().copy() for v in model.target_encoder.trainable_variables]
    model.train_mask = True
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), verbose=0)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(encoder_before, model.target_encoder.trainable_variables))
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(mask_before, model.mask_decoder.trainable_variables))


def test_config_round_trip():
    model = fvae.FlowVAE(base_channels=4, output_kind="rgb", coherence_alpha=3.0)
    clone = fvae.FlowVAE.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match="output_kind"):
        fvae.FlowVAE(output_kind="mask")
