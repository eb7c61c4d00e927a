"""Wang (2019)'s losses on cases computable by hand, and the mask composition."""

import numpy as np
import pytest
import tensorflow as tf

from normalized_faces import landmarks as lm
from normalized_faces.wang2019 import losses

SIZE = lm.ALIGNED_SIZE


def _template(batch=2):
    return np.repeat(lm.template_landmarks()[None], batch, axis=0).astype(np.float32)


def test_a_symmetric_level_face_has_zero_symmetry_and_tilt_loss():
    face = _template()
    assert float(losses.symmetry_loss(face, SIZE)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.tilt_loss(face)) == pytest.approx(0.0, abs=1e-5)


def test_symmetry_and_tilt_measure_pixels():
    shifted = _template() + np.array([3.0, 0.0], np.float32)  # 3 px right of the centre line
    assert float(losses.symmetry_loss(shifted, SIZE)) == pytest.approx(3.0, abs=1e-4)
    assert float(losses.tilt_loss(shifted)) == pytest.approx(0.0, abs=1e-5)
    # Roll: the subject's right side (image left, x < centre) 2 px lower than the left side.
    rolled = _template()
    left_side = rolled[..., 0] < (SIZE - 1) / 2.0
    rolled[..., 1] += np.where(left_side, 2.0, 0.0)
    assert float(losses.tilt_loss(rolled)) == pytest.approx(2.0, abs=1e-4)


def test_closed_lips_give_zero_expression_loss_and_an_open_mouth_its_gap():
    closed = _template()
    closed[:, [65, 66, 67], 1] = closed[:, [63, 62, 61], 1]
    assert float(losses.expression_loss(closed)) == pytest.approx(0.0, abs=1e-6)
    opened = closed.copy()
    opened[:, [65, 66, 67], 1] += 4.0
    assert float(losses.expression_loss(opened)) == pytest.approx(12.0, abs=1e-4)  # three pairs, 4 px each


def test_identical_landmarks_give_zero_geometry_loss_at_any_scale_and_place():
    face = _template()
    assert float(losses.geometry_loss(face, face)) == pytest.approx(0.0, abs=1e-6)
    moved = 1.3 * (face - 100.0) + 120.0  # a similar face: same proportions
    assert float(losses.geometry_loss(face, moved)) == pytest.approx(0.0, abs=1e-6)
    other = lm.random_face_landmarks(np.random.default_rng(0), 2).astype(np.float32)
    assert float(losses.geometry_loss(face, other)) > 1e-4


def test_l1_distance_matrix_by_hand():
    points = np.array([[[0.0, 0.0], [3.0, 4.0], [1.0, -1.0]]], np.float32)
    expected = [[0, 7, 2], [7, 0, 7], [2, 7, 0]]
    np.testing.assert_allclose(losses.l1_distance_matrix(points)[0], expected)


def test_mask_composition():
    noisy = tf.fill([1, 4, 4, 3], 0.2)
    mask = tf.constant(np.array([1.0, 0.0, 0.5, 0.25], np.float32).reshape(1, 2, 2, 1).repeat(2, 1).repeat(2, 2))
    out = losses.compose(noisy, mask).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [0.2] * 3)  # W = 1: the face
    np.testing.assert_allclose(out[0, 0, 2], [1.0] * 3)  # W = 0: white
    np.testing.assert_allclose(out[0, 2, 0], [0.6] * 3)  # W = 0.5: halfway


def test_mask_loss_by_hand():
    flat = tf.fill([1, 5, 5, 1], 0.5)
    assert float(losses.mask_loss(flat)) == pytest.approx(0.5)  # no variation: only mean(W)
    assert float(losses.mask_loss(flat, power=2.0)) == pytest.approx(0.25)
    stripes = np.zeros([1, 4, 4, 1], np.float32)
    stripes[:, :, 1::2] = 1.0  # columns alternate 0, 1: every horizontal step differs by 1
    # mean(W) = 0.5; TV over the 3 x 3 top-left block: vertical 0, horizontal 1 each.
    assert float(losses.mask_loss(stripes)) == pytest.approx(1.5)


def test_lsgan_losses():
    assert float(losses.lsgan_generator_loss(tf.ones([2, 20, 20, 1]))) == 0.0
    assert float(losses.lsgan_generator_loss(-tf.ones([2, 20, 20, 1]))) == 4.0
    assert float(losses.lsgan_discriminator_loss(tf.ones([1, 3, 3, 1]), -tf.ones([1, 3, 3, 1]))) == 0.0
    assert float(losses.lsgan_discriminator_loss(tf.zeros([1, 3, 3, 1]), tf.zeros([1, 3, 3, 1]))) == 2.0


def test_masked_texture_loss_is_zero_for_the_same_face_and_grows_with_a_change():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=[1, 64, 64, 3]).astype(np.float32)
    points = lm.template_landmarks(64, 55.0 * 64 / 224)[None].astype(np.float32)
    mask = np.ones([1, 64, 64, 1], np.float32)
    canonical = losses.canonical_reliable_points(64, 55.0 * 64 / 224)
    same = losses.masked_texture_loss(image, image, points, points, mask, canonical)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    changed = losses.masked_texture_loss(image, np.clip(image + 0.1, 0, 1), points, points, mask, canonical)
    # A sum over the 64 x 64 x 3 values of a difference of up to 0.1 (less where clipped at 1).
    assert 0.05 * 64 * 64 * 3 < float(changed) < 0.1 * 64 * 64 * 3
    # A zero mask ignores every difference.
    assert float(losses.masked_texture_loss(image, 1 - image, points, points, 0 * mask, canonical)) == 0.0


# --- The networks ----------------------------------------------------------------------------------

from layer_testing import run_layer_test  # noqa: E402

from normalized_faces.wang2019 import model as wang  # noqa: E402


@pytest.mark.parametrize("size,patches", [(320, 20), (160, 10)])
def test_discriminator_gives_a_patch_score_map(size, patches):
    run_layer_test(
        wang.PatchDiscriminator,
        {},
        np.random.default_rng(0).uniform(size=[1, size, size, 3]),
        (1, patches, patches, 1),
        expected_num_trainable_weights=18,
        run_training_check=size == 160,
        float32_output=True,
    )


def test_residual_block_and_up_stage():
    x = np.random.default_rng(0).normal(size=[2, 5, 5, 8])
    run_layer_test(wang.ResidualBlock, {"channels": 8}, x, (2, 5, 5, 8), expected_num_trainable_weights=4)
    run_layer_test(
        wang.UpStage, {"in_channels": 8, "channels": 4}, x, (2, 10, 10, 4), expected_num_trainable_weights=10
    )


def test_generator_stages_shapes_and_mask_composition():
    assert wang._stage_channels(320) == [(10, 96), (20, 48), (40, 24), (80, 12), (160, 6), (320, 3)]
    assert wang._stage_channels(160) == [(10, 96), (20, 48), (40, 24), (80, 12), (160, 3)]
    with pytest.raises(ValueError, match="5 \\* 2\\^k"):
        wang._stage_channels(224)
    generator = wang.WangGenerator(output_size=160, fc_width=16)
    out = generator(tf.constant(np.random.default_rng(1).normal(size=[2, 12]), tf.float32))
    assert out["noisy"].shape == (2, 160, 160, 3) and out["mask"].shape == (2, 160, 160, 1)
    assert 0.0 <= float(tf.reduce_min(out["mask"])) and float(tf.reduce_max(out["mask"])) <= 1.0
    np.testing.assert_allclose(out["face"], losses.compose(out["noisy"], out["mask"]), atol=1e-6)
    revived = wang.WangGenerator.from_config(generator.get_config())
    assert revived.get_config() == generator.get_config()


def _tiny_wang_model(**overrides):
    from normalized_faces import landmark_regressor as lr
    from normalized_faces.encoders import get_encoder

    regressor = lr.LandmarkRegressor(lm.template_landmarks(), input_size=32, channels=(4, 4, 4, 4, 4), hidden=8)
    settings = dict(output_size=160, fc_width=16, discriminator_every=4)
    settings.update(overrides)
    return wang.WangModel(get_encoder("dlib_resnet"), regressor, **settings)


def test_four_generator_updates_per_discriminator_update():
    import keras

    rng = np.random.default_rng(2)
    batch = {
        "image": tf.constant(rng.uniform(size=[2, 224, 224, 3]), tf.float32),
        "landmarks": tf.constant(lm.random_face_landmarks(rng, 2), tf.float32),
    }
    model = _tiny_wang_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-4))  # scale-free: the texture term is a sum over pixels
    model.build_for_training()
    d_kernel = model.discriminator.conv_0.kernel
    g_kernel = model.generator.fc_1.kernel
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    history = []
    for _ in range(8):
        d_before, g_before = d_kernel.numpy().copy(), g_kernel.numpy().copy()
        model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
        history.append((not np.array_equal(g_kernel.numpy(), g_before), not np.array_equal(d_kernel.numpy(), d_before)))
    assert [g for g, _ in history] == [True] * 8
    assert [d for _, d in history] == [False, False, False, True] * 2
    assert int(model.discriminator_updates.numpy()) == 2 and int(model.optimizer.iterations.numpy()) == 8


def test_without_gan_the_discriminator_never_trains():
    import keras

    rng = np.random.default_rng(3)
    batch = {
        "image": tf.constant(rng.uniform(size=[2, 224, 224, 3]), tf.float32),
        "landmarks": tf.constant(lm.random_face_landmarks(rng, 2), tf.float32),
    }
    model = _tiny_wang_model(gan_weight=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))  # scale-free: the texture term is a sum over pixels
    model.build_for_training()
    logs = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=4, epochs=1, verbose=0).history
    assert int(model.discriminator_updates.numpy()) == 0 and "gan_loss" not in logs
    assert all(np.isfinite(v[-1]) for v in logs.values())


# --- End to end: train (and resume), export, normalize-face -----------------------------------------


@pytest.mark.slow
def test_wang2019_trains_resumes_exports_and_normalizes(tmp_path):
    """train_main --method=wang2019 on photo records, resumed; the export reloaded in a fresh
    process; normalize-face on its export."""
    import subprocess
    import sys

    from data_prep import synthetic
    from normalized_faces import train

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "run"
    command = [
        sys.executable, str(repo / "train_main.py"), "--config=tiny", "--method=wang2019", f"--model_dir={model_dir}",
        "--train_steps=4", "--checkpoint_interval=4", "--validation_interval=4",
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "step 4/4" in first.stdout
    data_dir = model_dir / "tiny_data"
    assert {r.kind for r in _records(data_dir)} == {"photo"}
    config = train.tiny_config(str(model_dir), method="wang2019", train_steps=8, checkpoint_interval=4)
    result = train.train(config)
    assert result["step"] == 8 and result["status"] == "trained"
    history = result["history"]
    assert np.isfinite(history["loss"][-1]) and np.isfinite(history["discriminator_loss"][-1])
    # The discriminator's counter and optimizer came back from the checkpoint: 1 update in each half.
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    counters = [k for k in reader.get_variable_to_shape_map() if "discriminator_updates" in k]
    assert counters and int(reader.get_tensor(counters[0])) == 2
    assert any("discriminator_optimizer" in k for k in reader.get_variable_to_shape_map())
    samples = sorted((model_dir / "samples").glob("step_*.png"))
    assert samples, "no sample grid was written"

    from export import saved_model

    exported = saved_model.export(model_dir, tmp_path / "export", version=1)
    manifest = synthetic.write_synthetic_dataset(tmp_path / "photos", num_identities=2, photos_per_identity=1, seed=4)
    out = tmp_path / "normalized"
    cli = subprocess.run(
        [sys.executable, "-m", "normalized_faces.cli", f"--model={exported}", f"--output_dir={out}", f"--manifest={manifest}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (out / "grid.png").exists() and len(list(out.glob("*.png"))) == 3


def _records(data_dir):
    from normalized_faces import data

    return [
        data.decode_record(r.numpy())
        for split in data.SPLITS
        for r in tf.data.TFRecordDataset(data.record_files(data_dir, split))
    ]
