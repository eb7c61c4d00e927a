"""The terms against the identity loss's shared pattern (normalized_faces/identity_robustness.py),
against independent references: OpenCV's affine warp, SciPy's Gaussian filter, finite differences."""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from normalized_faces import identity_robustness as robust


def test_jitter_is_the_similarity_it_draws_as_opencv_computes_it():
    rng = np.random.default_rng(0)
    chips = ndimage.gaussian_filter(rng.random((3, 40, 40, 3)), (0, 2, 2, 0)).astype(np.float32)
    seed = tf.constant([7, 11], tf.int64)
    jittered = robust.jitter_chips(tf.constant(chips), strength=1.0, seed=seed).numpy()
    transforms = robust.similarity_jitter_matrices(3, 40, 1.0, seed).numpy()
    noise_free = []
    for chip, transform in zip(chips, transforms):
        matrix = np.asarray(transform, np.float64)
        # A similarity (up to a mirror): orthogonal columns of equal length within the ranges.
        assert abs(np.linalg.norm(matrix[:, 0]) - np.linalg.norm(matrix[:, 1])) < 1e-5
        assert 1 / (1 + robust.MAX_SCALE) - 1e-6 <= np.linalg.norm(matrix[:, 0]) <= 1 / (1 - robust.MAX_SCALE) + 1e-6
        reference = cv2.warpAffine(
            chip, matrix, (40, 40), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        noise_free.append(reference)
    difference = jittered - np.clip(np.stack(noise_free), 0, 1)
    inner = difference
    print("jitter - OpenCV: mean", inner.mean(), "std", inner.std(), "(the noise is", robust.NOISE, ")")
    assert abs(inner.mean()) < 2e-3 and abs(inner.std() - robust.NOISE) < 2e-3  # what is left is the noise


def test_jitter_off_is_the_identity_and_on_has_a_gradient():
    chips = tf.random.stateless_uniform([2, 16, 16, 3], [1, 2])
    assert robust.jitter_chips(chips, 0.0) is chips
    seed = tf.constant([3, 4], tf.int64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: robust.jitter_chips(x, 1.0, seed) * 0.5, [tf.cast(chips, tf.float32) * 0.5 + 0.25]
    )
    assert np.abs(theoretical[0] - numerical[0]).max() < 5e-3
    assert np.abs(theoretical[0]).max() > 0.1


def test_highpass_matches_scipy():
    image = np.random.default_rng(1).random((2, 30, 34, 3)).astype(np.float32)
    ours = robust.highpass(tf.constant(image), sigma=2.0).numpy()
    reference = image - ndimage.gaussian_filter(image, (0, 2.0, 2.0, 0), mode="mirror", truncate=3.0)
    assert np.abs(ours - reference).max() < 1e-5


def test_shared_residual_loss_sees_a_pattern_on_every_face_not_each_faces_own_error():
    rng = np.random.default_rng(2)
    targets = ndimage.gaussian_filter(rng.random((16, 48, 48, 3)), (0, 3, 3, 0)).astype(np.float32)
    line = np.zeros((48, 48, 3), np.float32)
    line[10:38, 30] = -0.15  # a thin dark line, the same on every face
    own_errors = (rng.normal(0, 0.05, targets.shape)).astype(np.float32)  # as strong, different per face
    exact = float(robust.shared_residual_loss(targets, targets))
    shared = float(robust.shared_residual_loss(targets + line, targets))
    private = float(robust.shared_residual_loss(targets + own_errors, targets))
    print(f"exact {exact:.5f}  pattern on every face {shared:.5f}  own errors {private:.5f}")
    # Per face the own errors are ~20x the line's L1; the batch mean shrinks them like 1 / sqrt(16),
    # the line not at all: relative to a plain L1 loss the line weighs several times more.
    plain_ratio = np.abs(line).mean() / np.abs(own_errors).mean()
    print(f"line / own errors: plain L1 {plain_ratio:.4f}, shared residual {shared / private:.4f}")
    assert exact == 0.0 and shared / private > 3 * plain_ratio


@pytest.mark.parametrize("jitter, shared", [(1.0, 0.0), (0.0, 5.0), (1.0, 5.0)])
def test_a_model_trains_a_step_with_them_and_keeps_them_in_its_config(tiny_data_dir, tmp_path, jitter, shared):
    from normalized_faces import train

    config = train.tiny_config(
        str(tmp_path / "run"),
        data_dir=tiny_data_dir,
        train_steps=2,
        checkpoint_interval=2,
        identity_jitter=jitter,
        shared_residual_weight=shared,
    )
    result = train.train(config)
    assert result["step"] == 2
    history = result["history"]
    assert ("shared_residual_loss" in history) == (shared > 0), history.keys()
    import json

    model_config = json.loads((tmp_path / "run" / "model_config.json").read_text())
    assert model_config["identity_jitter"] == jitter and model_config["shared_residual_weight"] == shared
