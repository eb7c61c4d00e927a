"""The flow VAE's parts (normalized_faces/fvae): the flow sampler, the losses on hand-computable
inputs, Algorithm 1's steps, the blending weights, and the model's two training phases."""

from __future__ import annotations

import dataclasses

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
    steps = fvae.edit_latents(latent, tf.ones([4, 4, 8]), steps=4)
    assert steps.shape == (4, 2, 4, 4, 8)
    for i in range(4):
        np.testing.assert_allclose(steps[i].numpy(), latent.numpy() + (i + 1) / 4, atol=1e-6)
    per_photo = fvae.edit_latents(latent, tf.stack([tf.ones([4, 4, 8]), -tf.ones([4, 4, 8])]), steps=2)
    np.testing.assert_allclose(per_photo[0].numpy(), latent.numpy() + [[[[0.5]]], [[[-0.5]]]], atol=1e-6)


def _labelled_photos(labels, identities, head_shifts):
    """A PhotoSet of blank photos with the template's landmarks (at 128 px), mouths and heads moved:
    labels from expressions.label of those landmarks, heads shifted right by head_shifts px."""
    from normalized_faces import expressions
    from normalized_faces import landmarks as lm
    from normalized_faces.fvae import data as fvae_data

    template = lm.template_landmarks(128, lm.INTEROCULAR_DISTANCE * 128 / lm.ALIGNED_SIZE)
    points = []
    for label, shift in zip(labels, head_shifts):
        face = template.copy()
        width = face[54, 0] - face[48, 0]
        if label == "smile":  # corners raised a third of the mouth's width
            face[[48, 54], 1] -= width / 3
        elif label == "open_mouth":  # lower inner lip dropped half the width
            face[65:68, 1] += width / 2
        face[:, 0] += shift
        assert expressions.label(face) == label
        points.append(face)
    return fvae_data.PhotoSet(
        np.zeros([len(labels), 128, 128, 3], np.uint8), np.array(identities), np.array(labels), np.stack(points)
    )


def test_expression_directions_label_means_and_pose_alike_pairs():
    from normalized_faces import expressions
    from normalized_faces.fvae import editing

    labels = ["neutral", "smile", "smile", "neutral", "smile", "open_mouth"]
    photos = _labelled_photos(labels, ["a", "a", "a", "b", "b", "b"], [0, 1, 9, 0, 0, 0])
    latents = np.array([0.0, 10.0, 100.0, 2.0, 4.0, 7.0], np.float32)[:, None, None, None]  # [N, 1, 1, 1]
    index = expressions.LABELS.index
    means = editing.expression_directions(latents, photos, "label_means")
    table = means["directions"][..., 0, 0, 0]
    # The paper's: mean smile (10 + 100 + 4) / 3 - mean neutral (0 + 2) / 2.
    assert table[index("neutral"), index("smile")] == pytest.approx(38.0 - 1.0)
    assert table[index("smile"), index("neutral")] == pytest.approx(-37.0)
    assert np.all(np.diag(table) == 0) and np.all(means["pairs"] == 0)
    np.testing.assert_array_equal(means["label_photos"], [2, 3, 1, 0])
    # "other" as a source: from the mean of the labels' means (1, 38, 7).
    assert table[index("other"), index("open_mouth")] == pytest.approx(7.0 - 46.0 / 3)

    paired = editing.expression_directions(latents, photos, "paired", max_pose_distance=2.0, min_pairs=1)
    steps, pairs = paired["directions"][..., 0, 0, 0], paired["pairs"]
    # a's smile 9 px away is left out: (10 - 0) from a, (4 - 2) from b.
    assert pairs[index("neutral"), index("smile")] == 2
    assert steps[index("neutral"), index("smile")] == pytest.approx((10.0 + 2.0) / 2)
    assert steps[index("smile"), index("neutral")] == pytest.approx(-6.0)
    assert steps[index("smile"), index("open_mouth")] == pytest.approx(7.0 - 4.0)
    # Too few pairs: the label means' step instead, and no pairs counted for it.
    few = editing.expression_directions(latents, photos, "paired", max_pose_distance=2.0, min_pairs=3)
    assert few["pairs"][index("neutral"), index("smile")] == 0
    assert few["directions"][index("neutral"), index("smile"), 0, 0, 0] == pytest.approx(37.0)
    with pytest.raises(ValueError, match="directions must be one of"):
        editing.expression_directions(latents, photos, "medians")


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
    model = fvae.FlowVAE(base_channels=4, output_kind=output_kind, mask_from_step=15)
    rng = np.random.default_rng(0)
    source = tf.constant(rng.uniform(-1, 1, [2, 128, 128, 3]), tf.float32)
    target = tf.constant(np.roll(source.numpy(), 2, axis=2))
    batch = {"source": source, "target": target}
    out = model(batch)
    assert out["mean"].shape == (2, 4, 4, 128) and out["output"].shape == (2, 128, 128, 3)
    assert out["mask"].shape == (2, 128, 128, 1)
    assert ("flow" in out) == (output_kind == "flow")
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipvalue=5.0))
    model.build_for_training()
    mask_before = [v.numpy().copy() for v in model.mask_decoder.trainable_variables]
    once = tf.data.Dataset.from_tensors(batch)
    first = model.evaluate(once, verbose=0, return_dict=True)["reconstruction_loss"]
    model.fit(once.repeat(15), verbose=0)  # steps 0..14: phase 1
    after = model.evaluate(once, verbose=0, return_dict=True)["reconstruction_loss"]
    assert after < first
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(mask_before, model.mask_decoder.trainable_variables))

    encoder_before = [v.numpy().copy() for v in model.target_encoder.trainable_variables]
    model.fit(once.repeat(3), verbose=0)  # steps 15..17: the mask phase
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(encoder_before, model.target_encoder.trainable_variables))
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(mask_before, model.mask_decoder.trainable_variables))


@pytest.mark.parametrize("output_kind", ["flow", "rgb"])
def test_mixed_bfloat16_computes_in_bfloat16_and_predicts_and_learns_in_float32(output_kind):
    """Under mixed_bfloat16 (what --precision=auto picks on AMX CPUs) the networks run in bfloat16,
    while the latent's statistics, the flow, the output, the mask and every loss term are float32
    (they once met float32 targets as bfloat16 and training stopped with a dtype error)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = fvae.FlowVAE(base_channels=4, output_kind=output_kind, mask_from_step=2)
        rng = np.random.default_rng(0)
        source = tf.constant(rng.uniform(-1, 1, [2, 128, 128, 3]), tf.float32)
        batch = {"source": source, "target": tf.constant(np.roll(source.numpy(), 2, axis=2))}
        out = model(batch)
        assert model.decoder.compute_dtype == "bfloat16"
        assert all(value.dtype == tf.float32 for value in out.values())
        terms = model.losses_for(batch)
        assert all(value.dtype == tf.float32 and np.isfinite(value.numpy()) for value in terms.values())
        model.compile(optimizer=keras.optimizers.Adam(3e-4, clipvalue=5.0))
        model.build_for_training()
        logs = model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), verbose=0).history  # both phases
        assert all(np.isfinite(values).all() for values in logs.values())
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_checkpoint_holds_every_weight(tmp_path):
    """Every variable of the model (convs and batch-norm statistics at every stage) is in its
    checkpoint, and a model rebuilt from its config and restored gives the same outputs."""
    keras.utils.set_random_seed(0)
    model = fvae.FlowVAE(base_channels=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build_for_training()
    batch = {"source": tf.random.uniform([2, 128, 128, 3], -1, 1), "target": tf.random.uniform([2, 128, 128, 3], -1, 1)}
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0)  # moves weights and statistics
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    stored = {name.split("/.ATTRIBUTES")[0] for name, _ in tf.train.list_variables(path) if name.startswith("model/")}
    assert len([n for n in stored if not n.startswith("model/optimizer")]) >= len(model.weights)
    clone = fvae.FlowVAE.from_config(model.get_config())
    clone(batch)
    tf.train.Checkpoint(model=clone).restore(path).expect_partial().assert_existing_objects_matched()
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_allclose(clone(batch)["flow"].numpy(), model(batch)["flow"].numpy(), atol=1e-6)


def test_config_round_trip():
    model = fvae.FlowVAE(base_channels=4, output_kind="rgb", coherence_alpha=3.0)
    clone = fvae.FlowVAE.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match="output_kind"):
        fvae.FlowVAE(output_kind="mask")


def test_expression_labels_from_landmarks():
    from normalized_faces import expressions
    from normalized_faces import landmarks as lm

    neutral = lm.template_landmarks()
    assert expressions.label(neutral) == "neutral"
    smiling = neutral.copy()
    width = np.linalg.norm(neutral[54] - neutral[48])
    smiling[[48, 54], 1] -= 0.3 * width  # corners up: above the lips' centre line
    assert expressions.smile(smiling) > expressions.SMILE and expressions.label(smiling) == "smile"
    open_mouth = neutral.copy()
    open_mouth[[65, 66, 67], 1] += 0.4 * width  # the lower inner lip drops
    assert expressions.label(open_mouth) == "open_mouth"


def test_colour_transfer_matches_the_target_statistics():
    import cv2

    from normalized_faces.fvae import data as fvae_data

    rng = np.random.default_rng(0)
    source = np.clip(rng.normal(90, 20, [32, 32, 3]), 0, 255).astype(np.uint8)
    target = np.clip(rng.normal([170, 120, 100], 15, [32, 32, 3]), 0, 255).astype(np.uint8)
    moved = fvae_data.colour_transfer(source, target)
    lab = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(lab(moved).mean(0), lab(target).mean(0), atol=1.5)
    np.testing.assert_allclose(lab(moved).std(0), lab(target).std(0), rtol=0.1, atol=1.0)


def test_pairs_are_of_one_person_and_deterministic():
    from normalized_faces.fvae import data as fvae_data

    rng = np.random.default_rng(0)
    # Each person's photos share a constant colour, so a pair's two images reveal whose they are.
    identities = np.array(["a", "a", "b", "b", "b", "c"])
    shades = {"a": 40, "b": 140, "c": 240}
    images = np.stack(
        [np.full([8, 8, 3], shades[i], np.uint8) + rng.integers(0, 3, [8, 8, 3]).astype(np.uint8) for i in identities]
    )
    photos = fvae_data.PhotoSet(images, identities, np.array(["neutral"] * 6), np.zeros([6, 68, 2], np.float32))
    assert sorted(photos.people_with_pairs()) == ["a", "b"]  # c has one photo
    batch = next(iter(fvae_data.pair_dataset(photos, 16, seed=3)))
    assert batch["source"].shape == (16, 8, 8, 3) and float(tf.reduce_min(batch["source"])) >= -1.0
    target_shade = (batch["target"].numpy().mean(axis=(1, 2, 3)) + 1) * 127.5
    assert set(np.round(target_shade / 100).astype(int)) <= {0, 1}  # a's (40) or b's (140), never c's
    again = next(iter(fvae_data.pair_dataset(photos, 16, seed=3)))
    np.testing.assert_array_equal(batch["target"].numpy(), again["target"].numpy())


def test_highpass_reconstruction_ignores_slow_shading_and_keeps_fine_detail():
    """A constant difference (a uniform change of brightness) costs nothing high-passed; a
    pixel-scale checkerboard, which a blur of sigma 5 flattens to ~0, costs what the plain L2 says."""
    rng = np.random.default_rng(0)
    output = rng.uniform(-1, 1, [2, 32, 32, 3]).astype(np.float32)
    constant = output + 0.3
    assert float(losses.reconstruction_loss(constant, output, highpass_sigma=5.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.reconstruction_loss(constant, output)) == pytest.approx(32 * 32 * 3 * 0.09, rel=1e-5)
    y, x = np.mgrid[0:32, 0:32]
    checkerboard = np.where((x + y) % 2 == 0, 0.1, -0.1).astype(np.float32)[None, :, :, None]
    plain = float(losses.reconstruction_loss(output + checkerboard, output))
    highpassed = float(losses.reconstruction_loss(output + checkerboard, output, highpass_sigma=5.0))
    assert plain == pytest.approx(32 * 32 * 3 * 0.01, rel=1e-5) and highpassed == pytest.approx(plain, rel=1e-3)
    blurred = losses.gaussian_blur(tf.constant(checkerboard.repeat(3, -1)), 5.0).numpy()
    assert np.abs(blurred).max() < 1e-4 and blurred.shape == (1, 32, 32, 3)


def test_pose_filter_keeps_only_pairs_alike_in_pose():
    from normalized_faces import landmarks as landmarks_module
    from normalized_faces.fvae import data as fvae_data

    identities = np.array(["a", "a", "b", "b", "b"])
    landmarks = np.tile(np.random.default_rng(0).uniform(20, 100, [1, 68, 2]).astype(np.float32), [5, 1, 1])
    landmarks[1] += [6.0, 0.0]  # a's second photo: the whole head 6 px to the right
    landmarks[4, 48:68] += [0.0, 9.0]  # b's third photo: only the mouth moved (an expression)
    landmarks[3, landmarks_module.POSE_LANDMARKS] += [0.0, 2.0]  # b's second: head 2 px lower
    photos = fvae_data.PhotoSet(np.zeros([5, 8, 8, 3], np.uint8), identities, np.array(["neutral"] * 5), landmarks)
    assert landmarks_module.pose_distance(landmarks[0], landmarks[1]) == pytest.approx(6.0)
    assert landmarks_module.pose_distance(landmarks[2], landmarks[4]) == 0.0  # the mouth does not count
    assert fvae_data.person_pairs(photos, 3.0) == {"b": [(2, 3), (2, 4), (3, 4)]}
    assert fvae_data.person_pairs(photos, 1.0) == {"b": [(2, 4)]}
    assert sorted(fvae_data.person_pairs(photos)) == ["a", "b"]
    only_a = fvae_data.PhotoSet(photos.images[:2], identities[:2], photos.labels[:2], landmarks[:2])
    with pytest.raises(ValueError, match="pose distance of 3 px"):
        fvae_data.pair_dataset(only_a, 2, max_pose_distance=3.0)
    with pytest.raises(ValueError, match="region must be image or face"):
        fvae_data.pair_dataset(photos, 2, region="hair")


def test_face_region_weights_the_reconstruction():
    from normalized_faces.fvae import data as fvae_data
    from normalized_faces.fvae import losses

    corners = np.array([[4, 3], [11, 3], [11, 12], [4, 12]], np.float32)  # x, y: a 7 x 9 px rectangle
    landmarks = np.concatenate([corners, np.tile([[7.0, 7.0]], [64, 1])])  # the rest inside it
    region = fvae_data.face_region(landmarks, 16, margin=0)
    assert region.shape == (16, 16, 1) and region.dtype == np.float32
    assert region[3:13, 4:12].min() == 1.0 and region.sum() == 8 * 10  # corners inclusive
    assert fvae_data.face_region(landmarks, 16, margin=1).sum() == 10 * 12
    target, output = np.zeros([1, 16, 16, 3], np.float32), np.full([1, 16, 16, 3], 0.5, np.float32)
    weighted = losses.reconstruction_loss(target, output, region[None])
    assert float(weighted) == pytest.approx(80 * 3 * 0.25)  # only the face's 80 pixels count
    assert float(losses.reconstruction_loss(target, output)) == pytest.approx(256 * 3 * 0.25)

    # In batches the weight is the target's region, flipped with it.
    images = np.zeros([2, 16, 16, 3], np.uint8)
    images[1] = 200  # T (one or the other photo) tells which landmarks the weight must follow
    shifted = landmarks + [3.0, 0.0]
    photos = fvae_data.PhotoSet(images, np.array(["a", "a"]), np.array(["neutral"] * 2), np.stack([landmarks, shifted]))
    batch = next(iter(fvae_data.pair_dataset(photos, 16, seed=1, region="face")))
    for target_image, weight in zip(batch["target"].numpy(), batch["target_weight"].numpy()):
        columns = np.flatnonzero(weight[8, :, 0])
        expected = fvae_data.face_region(shifted if target_image.mean() > 0 else landmarks, 16)[8, :, 0]
        assert len(columns) == expected.sum()
        assert columns.tolist() in (np.flatnonzero(expected).tolist(), np.flatnonzero(expected[::-1]).tolist())
    assert "target_weight" not in next(iter(fvae_data.pair_dataset(photos, 2, seed=1)))

    # Self-pairs: S is T itself (not colour-transferred), counted over the whole image.
    batch = next(iter(fvae_data.pair_dataset(photos, 16, seed=1, region="face", self_pairs=1.0)))
    np.testing.assert_array_equal(batch["source"].numpy(), batch["target"].numpy())
    assert float(np.min(batch["target_weight"])) == 1.0
    textured = np.random.default_rng(0).integers(0, 256, [2, 16, 16, 3], dtype=np.uint8)  # colour transfer changes it
    photos = dataclasses.replace(photos, images=textured)
    mixed = next(iter(fvae_data.pair_dataset(photos, 64, seed=1, self_pairs=0.25)))
    same = np.all(mixed["source"].numpy() == mixed["target"].numpy(), axis=(1, 2, 3))
    assert 5 <= same.sum() <= 30  # 16 expected of 64


def test_landmark_loss_by_hand_and_its_landmarks_flip_with_the_photos():
    """A constant flow of (c_x, c_y) normalized moves every sample by c * (size - 1) / 2 pixels, so
    the loss is sum_k |t_k + c * scale - s_k|^2; it is zero for the flow that carries T's landmarks
    exactly onto S's, and its gradient is that of the sum (finite differences)."""
    from normalized_faces.fvae import data as fvae_data

    rng = np.random.default_rng(0)
    size = 16
    target_points = rng.uniform(2, 13, [2, 68, 2]).astype(np.float32)
    shift_px = np.array([[3.0, -1.5], [0.5, 2.0]], np.float32)  # per example: S = T moved by this
    source_points = target_points + shift_px[:, None]
    scale = (size - 1) / 2.0
    exact = np.tile((shift_px / scale)[:, None, None], [1, size, size, 1])
    assert float(losses.landmark_loss(exact, source_points, target_points)) == pytest.approx(0.0, abs=1e-8)
    constant = np.full([2, size, size, 2], 0.1, np.float32)
    miss = target_points + 0.1 * scale - source_points
    expected = np.mean(np.sum(miss**2, axis=(1, 2)))
    assert float(losses.landmark_loss(constant, source_points, target_points)) == pytest.approx(expected, rel=1e-5)

    flow = tf.Variable(rng.normal(0, 0.05, [2, size, size, 2]).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = losses.landmark_loss(flow, source_points, target_points)
    gradient = tape.gradient(loss, flow).numpy()
    # One flow value under a landmark: the loss is quadratic in it, so a central difference is exact
    # up to float rounding.
    x, y = np.floor(target_points[0, 0]).astype(int)
    step = 1e-2
    changed = []
    for sign in (1, -1):
        moved = flow.numpy().copy()
        moved[0, y, x, 0] += sign * step
        changed.append(float(losses.landmark_loss(moved, source_points, target_points)))
    assert gradient[0, y, x, 0] == pytest.approx((changed[0] - changed[1]) / (2 * step), rel=1e-3)

    # In batches: S's and T's landmarks, both mirrored when the photos are (x -> size - 1 - x).
    images = np.zeros([2, size, size, 3], np.uint8)
    images[1] = 200
    images[:, :, :4] += 50  # a bright left edge shows whether a photo was flipped
    points = np.stack([target_points[0], source_points[0]])
    photos = fvae_data.PhotoSet(images, np.array(["a", "a"]), np.array(["neutral"] * 2), points)
    batch = next(iter(fvae_data.pair_dataset(photos, 16, seed=3, with_landmarks=True)))
    flipped_seen = set()
    for i in range(16):
        target = batch["target"].numpy()[i]
        flipped = bool(target[0, -1, 0] > target[0, 0, 0])
        flipped_seen.add(flipped)
        t, s = (1, 0) if target.mean() > 0 else (0, 1)
        expected_t, expected_s = points[t].copy(), points[s].copy()
        if flipped:
            expected_t[:, 0], expected_s[:, 0] = size - 1 - expected_t[:, 0], size - 1 - expected_s[:, 0]
        np.testing.assert_allclose(batch["target_landmarks"].numpy()[i], expected_t, atol=1e-5)
        np.testing.assert_allclose(batch["source_landmarks"].numpy()[i], expected_s, atol=1e-5)
    assert flipped_seen == {True, False}
    assert "target_landmarks" not in next(iter(fvae_data.pair_dataset(photos, 2, seed=1)))


def test_paste_into_photo_moves_the_photo_by_the_flow():
    """A zero flow leaves the photo as it was; a constant flow of k aligned pixels moves the photo's
    pixels by k / scale photo pixels inside the crop (an alignment that doubles the photo's scale),
    and leaves what is outside the crop alone."""
    from normalized_faces.fvae.editing import paste_into_photo

    rng = np.random.default_rng(0)
    photo = (rng.uniform(0, 255, [300, 300, 3])).astype(np.uint8)
    photo = np.asarray(tf.image.resize(photo[None].astype(np.float32), [300, 300])[0]).astype(np.uint8)
    ramp = np.tile(np.arange(300, dtype=np.uint8)[None, :, None], [300, 1, 3])  # value = photo x
    matrix = np.array([[2.0, 0.0, -188.0], [0.0, 2.0, -188.0]])  # aligned = 2 photo - 188: photo 94..205.5
    zero = np.zeros([128, 128, 2], np.float32)
    np.testing.assert_array_equal(paste_into_photo(photo, matrix, zero), photo)
    k = 4.0  # aligned pixels to the right: the photo's pixel 2 px to the right comes in
    flow = np.full([128, 128, 2], 0.0, np.float32)
    flow[..., 0] = k * 2 / (224 - 1)
    moved = paste_into_photo(ramp, matrix, flow)
    centre = moved[140:160, 140:160, 0].astype(int)
    np.testing.assert_allclose(centre, ramp[140:160, 142:162, 0], atol=1)
    np.testing.assert_array_equal(moved[:5, :5], ramp[:5, :5])  # outside the crop: untouched


@pytest.mark.slow
def test_fvae_trains_resumes_and_edits_photos(tmp_path):
    """train_main --method=fvae on photo records, resumed; edit-expression on real photos (lfw10)
    with bad input beside them; the export reloaded in a fresh process edits as the library does;
    interpolation. The tiny run's synthetic faces are all neutral, so
    its mean latents lack smile and open_mouth and the command refuses it with a line; the test
    then gives it latents for those labels (from real photos' encodings) to exercise the edit."""
    import os
    import pathlib
    import subprocess
    import sys

    from normalized_faces import train
    from normalized_faces.fvae import command, editing

    repo = pathlib.Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "run"
    first = subprocess.run(
        [sys.executable, str(repo / "train_main.py"), "--config=tiny", "--method=fvae", f"--model_dir={model_dir}",
         "--train_steps=4", "--checkpoint_interval=4", "--validation_interval=4", "--fvae_mask_steps=2"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert "step 4/4" in first.stdout
    result = train.train(train.tiny_config(str(model_dir), method="fvae", train_steps=8, checkpoint_interval=4))
    assert result["step"] == 8 and np.isfinite(result["history"]["loss"][-1])
    assert sorted((model_dir / "samples").glob("step_*.png"))

    lfw10 = repo.parent / "shared" / "faces" / "lfw10"
    photos = [str(sorted((lfw10 / name).glob("*.jpg"))[0]) for name in ("Tony_Blair", "Colin_Powell")]
    lines = []
    assert command.run(str(model_dir), str(tmp_path / "refused"), photos, report=lines.append) == 2
    assert "cannot edit with it" in lines[0] and "smile" in lines[0]

    # The tiny run's photos are all neutral: give it steps towards the other labels to edit with.
    table = dict(np.load(model_dir / editing.directions_file("paired")))
    rng = np.random.default_rng(0)
    table["directions"] = rng.normal(0, 0.5, table["directions"].shape).astype(np.float32)
    table["label_photos"] = np.maximum(table["label_photos"], 1)
    np.savez(model_dir / editing.directions_file("paired"), **table)
    out, lines = tmp_path / "edited", []
    (tmp_path / "a_folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")  # read, it would block for ever
    bad = [str(tmp_path / name) for name in ("missing.jpg", "a_folder.jpg", "pipe.jpg")]
    code = command.run(str(model_dir), str(out), photos + bad, to="smile", steps=2, report=lines.append)
    assert code == 1 and any("missing.jpg: no such file" in line for line in lines)
    assert any("a_folder.jpg: a folder" in line for line in lines) and any("pipe.jpg: a FIFO" in line for line in lines)
    for photo in photos:
        stem = pathlib.Path(photo).stem
        edited = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / f"{stem}_smile.png"))
        original = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(photo))
        assert edited.shape == original.shape  # the whole photo, at its own size
        assert (out / f"{stem}_smile_1.png").exists() and (out / f"{stem}_smile_2.png").exists()
    assert (out / "grid.png").exists()

    # The export: reloaded in a fresh process, its edit signature gives the library's edit.
    from export import saved_model
    from normalized_faces import expressions
    from normalized_faces.cli import collect_faces

    exported = saved_model.export(model_dir, tmp_path / "export", version=1)
    found, _ = collect_faces([(photos[0], None)], report=lambda line: None)
    face, points = found[0].aligned.image, found[0].aligned.landmarks
    editor = editing.ExpressionEditor.from_run(model_dir)
    expected = editor.edit(face[None], points[None], "smile")["faces"][-1, 0]
    # Relative to the unedited face's own flow: no step, no change (the paper's flow would move it).
    unmoved = editor.edit(face[None], points[None], "smile", strength=0.0)
    assert np.abs(unmoved["flows"]).max() == 0.0
    np.testing.assert_array_equal(unmoved["faces"][-1, 0], face)
    source_label = expressions.LABELS.index(expressions.label(points))
    np.save(tmp_path / "face.npy", face)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"edit = tf.saved_model.load({str(exported)!r}).signatures['serving_default']\n"
        f"face = np.load({str(tmp_path / 'face.npy')!r}).astype(np.float32)[None] / 255\n"
        f"out = edit(images=tf.constant(face), source_label=tf.constant([{source_label}]),\n"
        f"           target_label=tf.constant([{expressions.LABELS.index('smile')}]), strength=tf.constant([1.0]))\n"
        f"np.save({str(tmp_path / 'served.npy')!r}, out['edited'].numpy()[0])\n"
    )
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr
    served_face = np.load(tmp_path / "served.npy") * 255
    assert np.abs(served_face - expected.astype(np.float64)).max() <= 2.0

    lines = []
    assert command.run(str(model_dir), str(tmp_path / "one"), photos[:1], interpolate=True, report=lines.append) == 2
    assert "exactly two photos" in lines[0]
    assert command.run(str(model_dir), str(tmp_path / "interp"), photos, interpolate=True, steps=3, report=print) == 0
    assert len(list((tmp_path / "interp").glob("interpolation_*.png"))) == 4

    # Beyond the paper: data prep with --neutralize_with=the export. A photo rejected only for
    # smiling is edited and judged again (this tiny model barely moves it, so it is rejected
    # "after neutralizing", or kept and counted); a photo failing another filter is not edited;
    # a neutral photo passes as before. The books balance.
    import dataclasses
    import json

    from data_prep import job, stages
    from data_prep.neutralize import Neutralizer

    sharon = lfw10 / "Ariel_Sharon"
    chosen = tmp_path / "prep_input" / "Ariel_Sharon"
    chosen.mkdir(parents=True)
    for name in ("Ariel_Sharon_0001.jpg", "Ariel_Sharon_0002.jpg", "Ariel_Sharon_0004.jpg"):  # smiling, kept, yaw
        (chosen / name).write_bytes((sharon / name).read_bytes())
    config = stages.PrepConfig(mode="photos", neutralize_with=str(tmp_path / "export"))
    summary = job.run(str(chosen.parent), str(tmp_path / "prep"), config, ["--direct_running_mode=in_memory"])
    assert summary["inputs"] == 3 == summary["accepted"] + summary["rejected"]
    rejected = {
        pathlib.Path(r["path"]).name: r
        for r in map(json.loads, (tmp_path / "prep" / "rejected.jsonl").read_text().splitlines())
    }
    assert rejected["Ariel_Sharon_0004.jpg"]["reason"] == "head_pose_yaw"
    assert "neutralizing" not in rejected["Ariel_Sharon_0004.jpg"]["detail"]
    assert "Ariel_Sharon_0002.jpg" not in rejected
    if "Ariel_Sharon_0001.jpg" in rejected:
        smiling = rejected["Ariel_Sharon_0001.jpg"]
        assert smiling["reason"] in ("smiling", "mouth_open") and "after neutralizing" in smiling["detail"]
        assert summary["neutralized"] == 0
    else:
        assert summary["neutralized"] == 1
    # With no head movement allowed, the smiling photo's edit is rejected for moving the head
    # (dlib's landmarks found again on the edit never sit exactly where the alignment put them).
    strict = dataclasses.replace(config, neutralize_max_head_shift=0.0)
    summary = job.run(str(chosen.parent), str(tmp_path / "prep_strict"), strict, ["--direct_running_mode=in_memory"])
    moved = [
        r
        for r in map(json.loads, (tmp_path / "prep_strict" / "rejected.jsonl").read_text().splitlines())
        if pathlib.Path(r["path"]).name == "Ariel_Sharon_0001.jpg"
    ]
    assert moved[0]["reason"] == "neutralize_moved_head" and "moved the head" in moved[0]["detail"]
    assert summary["neutralized"] == 0 and summary["accepted"] == 1
    # --neutralize_strength scales the served step: none moves nothing (relative flow), two moves the
    # pixels as the library's edit at strength 2 does.
    served_edit = tf.saved_model.load(str(exported)).signatures["serving_default"]

    def served_flow(strength):
        return served_edit(
            images=tf.constant(face[None].astype(np.float32) / 255),
            source_label=tf.constant([source_label]),
            target_label=tf.constant([expressions.LABELS.index("neutral")]),
            strength=tf.constant([strength]),
        )["flow"].numpy()

    library = editor.edit(face[None], points[None], "neutral", strength=2.0)
    assert np.abs(served_flow(0.0)).max() == 0.0 and np.abs(served_flow(2.0)).max() > 0.0
    np.testing.assert_allclose(served_flow(2.0), library["flows"][-1], atol=1e-5)
    np.testing.assert_array_equal(Neutralizer(tmp_path / "export", strength=0.0)(face, points), face)
    neutralized = Neutralizer(tmp_path / "export", strength=2.0)(face, points).astype(int)
    assert np.abs(neutralized - library["faces"][-1, 0]).max() <= 2
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        Neutralizer(tmp_path / "missing")
    # The cached directions belong to a checkpoint: made with another (a run trained further since),
    # they are computed again from the training photos (all neutral here: no smile photos counted).
    stale = dict(np.load(model_dir / editing.directions_file("paired")))
    assert str(stale["checkpoint"]) == "ckpt-8" and stale["label_photos"][expressions.LABELS.index("smile")] == 1
    np.savez(model_dir / editing.directions_file("paired"), **{**stale, "checkpoint": "ckpt-4"})
    fresh = editing.directions_for_run(model_dir, editor.model)
    assert fresh["label_photos"][expressions.LABELS.index("smile")] == 0
    assert str(np.load(model_dir / editing.directions_file("paired"))["checkpoint"]) == "ckpt-8"
