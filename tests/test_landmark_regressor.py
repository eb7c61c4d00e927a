"""The landmark regressor (Wang 2019's differentiable landmarks): layer, packaging, augmentation, mirror map."""

import numpy as np
import pytest
import tensorflow as tf
from layer_testing import run_layer_test

from normalized_faces import landmark_regressor as lr
from normalized_faces import landmarks as lm

SMALL = {"image_size": 64, "input_size": 32, "channels": (4, 4, 8, 8, 8), "hidden": 16}


def test_layer():
    mean = lm.template_landmarks(64)
    images = np.random.default_rng(0).uniform(size=[2, 64, 64, 3])
    # 5 stages x 2 convs + dense + offsets, kernel and bias each
    run_layer_test(lr.LandmarkRegressor, {"mean_landmarks": mean, **SMALL}, images, (2, 68, 2), 24, float32_output=True)


def test_an_untrained_regressor_answers_the_mean_landmarks():
    mean = lm.template_landmarks(64) + 1.5
    regressor = lr.LandmarkRegressor(mean, **SMALL)
    out = regressor(tf.zeros([3, 64, 64, 3])).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(mean, out.shape), atol=1e-5)


def test_gradients_reach_the_input_image():
    regressor = lr.LandmarkRegressor(lm.template_landmarks(64), **SMALL)
    regressor(tf.zeros([1, 64, 64, 3]))
    regressor.offsets.kernel.assign(np.random.default_rng(1).normal(size=regressor.offsets.kernel.shape) * 0.01)
    image = tf.Variable(np.random.default_rng(2).uniform(size=[1, 64, 64, 3]).astype(np.float32))
    with tf.GradientTape() as tape:
        points = regressor(image)
    gradient = tape.gradient(points, image)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0


def test_packaging_round_trip(tmp_path):
    regressor = lr.LandmarkRegressor(lm.template_landmarks(64), **SMALL)
    images = tf.constant(np.random.default_rng(3).uniform(size=[2, 64, 64, 3]), tf.float32)
    regressor(images)
    rng = np.random.default_rng(4)
    for weight in regressor.weights:
        weight.assign(rng.normal(scale=0.05, size=weight.shape))
    lr.save_pretrained(regressor, {"note": "test"}, tmp_path)
    loaded = lr.load_pretrained(tmp_path)
    assert not loaded.trainable and loaded.get_config() == {**regressor.get_config(), "trainable": False}
    # float16 storage: weights within 2^-11 relative, so points within a small fraction of a pixel.
    np.testing.assert_allclose(loaded(images).numpy(), regressor(images).numpy(), atol=0.05)
    with pytest.raises(FileNotFoundError, match="python -m experiments.landmark_regressor"):
        lr.load_pretrained(tmp_path / "missing")


def test_normalized_mean_error_is_in_interocular_units():
    reference = lm.template_landmarks()[None]
    shifted = reference + np.array([3.0, 4.0])  # every point 5 px away
    np.testing.assert_allclose(lr.normalized_mean_error(shifted, reference), [5.0 / 55.0], rtol=1e-6)


def test_mirror_maps_a_symmetric_face_onto_itself():
    template = lm.template_landmarks()
    flipped = template.copy()
    flipped[:, 0] = (lm.ALIGNED_SIZE - 1) - flipped[:, 0]
    np.testing.assert_allclose(flipped[lm.MIRROR], template, atol=1e-9)
    assert sorted(lm.MIRROR) == list(range(68)) and np.array_equal(lm.MIRROR[lm.MIRROR], np.arange(68))


def test_augmentation_moves_points_with_the_image():
    """Dots painted at the landmarks must be found at the augmented landmarks (flip included)."""
    from experiments.landmark_regressor import augment

    rng = np.random.default_rng(5)
    points = lm.random_face_landmarks(rng, 1)[0].astype(np.float32)
    image = np.zeros([224, 224, 3], np.uint8)
    for x, y in np.round(points).astype(int)[[36, 45, 30, 48, 54, 8]]:  # eyes' corners, nose, mouth, chin
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    painted = np.round(points).astype(np.float32)
    tf.random.set_seed(7)
    for _ in range(6):
        warped, moved = augment(tf.constant(image), tf.constant(painted))
        warped, moved = warped.numpy(), moved.numpy()
        for index in (36, 45, 30, 48, 54, 8):
            x, y = moved[index]
            patch = warped[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2].mean()
            assert patch > 0.35, (index, moved[index], patch)
