"""Measures of normalized faces against ground truth (normalized_faces/evaluation): a mean face, a
patterned face and a colour-shifted face must score as they should, on real aligned London photos."""

import json

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_path
from scipy import ndimage

from normalized_faces.evaluation import ground_truth, measures


@pytest.fixture(scope="module")
def london_faces():
    """Aligned neutral photos and landmarks of 8 London training people (never test people)."""
    from experiments import london_split
    from normalized_faces.batch import collect_faces

    root = shared_path("faces", "london")
    _, split = london_split.load_split(root)
    ids = split["train"][:8]
    found, failed = collect_faces([(root / i / f"{i}_neutral.jpg", None) for i in ids], report=print)
    assert not failed
    return np.stack([f.aligned.image for f in found]), np.stack([f.aligned.landmarks for f in found])


def test_lab_conversion_matches_the_standard_values():
    white, red = np.ones([2, 2, 3]), np.zeros([2, 2, 3])
    red[..., 0] = 1.0
    assert np.allclose(measures.mean_lab(white), [100.0, 0.0, 0.0], atol=0.05)
    assert np.allclose(measures.mean_lab(red), [53.24, 80.09, 67.20], atol=0.1)  # sRGB red, D65


def test_a_colour_shifted_face_scores_its_shift(london_faces):
    photos, landmarks = london_faces
    skin = measures.skin_mask(landmarks[0], 224)
    lab = cv2.cvtColor(photos[0].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lab[..., 0] = np.clip(lab[..., 0] + 8.0, 0, 100)  # 8 units lighter
    lighter = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255 + 0.5, 0, 255).astype(np.uint8)
    shift = measures.delta_e(measures.mean_lab(lighter, skin), measures.mean_lab(photos[0], skin))
    assert 7.0 < shift < 9.0
    assert measures.delta_e(measures.mean_lab(photos[0], skin), measures.mean_lab(photos[0], skin)) == 0.0
    assert skin.sum() > 0.4 * measures.face_mask(landmarks[0], 224).sum()


def test_a_patterned_set_shares_more_than_photos_and_a_mean_face_shares_all(london_faces):
    photos, landmarks = london_faces
    mask = measures.face_mask(landmarks.mean(0), 224)
    clean = measures.shared_pattern(photos, mask=mask)
    patterned = photos.astype(np.float64).copy()
    cv2.ellipse(patterned_line := np.zeros([224, 224]), (80, 140), (20, 40), 30, 0, 120, 1.0, 2)
    patterned -= 40 * patterned_line[..., None]  # a thin dark curved line on every cheek
    lined = measures.shared_pattern(np.clip(patterned, 0, 255).astype(np.uint8), mask=mask)
    mean_face = measures.shared_pattern(np.repeat(photos.mean(0, keepdims=True), 8, 0).astype(np.uint8), mask=mask)
    print(f"shared pattern: photos {clean:.3f}, photos with a line {lined:.3f}, one face for all {mean_face:.3f}")
    assert clean < 0.8 and lined > clean + 0.03 and mean_face == pytest.approx(1.0)


def test_ssim_and_sharpness_rank_a_blurred_face_and_a_mean_face_below_the_photo(london_faces):
    photos, landmarks = london_faces
    mask = measures.face_mask(landmarks[0], 224)
    blurred = ndimage.gaussian_filter(photos[0], (3, 3, 0))
    mean_face = photos.mean(0).astype(np.uint8)
    assert measures.ssim(photos[0], photos[0], mask) == pytest.approx(1.0)
    assert measures.ssim(blurred, photos[0], mask) < 0.9 and measures.ssim(mean_face, photos[0], mask) < 0.9
    assert measures.sharpness(blurred, mask) < 0.2 * measures.sharpness(photos[0], mask)


@pytest.mark.slow
def test_ground_truth_evaluation_of_the_shipped_model_on_four_test_people(tmp_path):
    """The unedited input is its own person (rank-1 100%) and keeps its sharpness; the mean face
    is no one and is blurred; the report holds every figure per person and group."""
    root = shared_path("faces", "london")
    people = (REPO / "experiments" / "london_test_people.txt").read_text().split()[:4]
    pairs = ground_truth.pairs_from(root, people=people)
    summary = ground_truth.evaluate_pairs(
        None, pairs, tmp_path / "four", ground_truth.read_groups(root / "info.csv"), ["dlib_resnet"], report=print
    )
    assert summary["evaluated"] == 4 and len(summary["per_person"]) == 4
    figures = summary["figures"]
    assert summary["identity"]["dlib_resnet"]["input"]["rank1"] == 1.0
    assert figures["input"]["sharpness_ratio"] > 0.5 and figures["mean_face"]["sharpness_ratio"] < 0.2
    assert figures["input"]["ssim"] > figures["mean_face"]["ssim"]
    assert all(key.startswith("face_") for key in summary["by_group"])
    report = json.loads((tmp_path / "four" / "report.json").read_text())
    assert report["figures"] == summary["figures"] and (tmp_path / "four" / "grid.png").stat().st_size > 10000


def test_the_perceptual_distance_is_zero_for_the_same_face_and_grows_with_blur_and_another_person(london_faces):
    photos, _ = london_faces
    distance = ground_truth.PerceptualDistance()
    slightly = np.clip(photos[:4].astype(np.int16) + np.random.default_rng(0).integers(-3, 4, photos[:4].shape), 0, 255)
    blurred = ndimage.gaussian_filter(photos[:4], (0, 3, 3, 0))
    same = distance(photos[:4], photos[:4])
    noisy, soft, other = (
        distance(slightly.astype(np.uint8), photos[:4]),
        distance(blurred, photos[:4]),
        distance(photos[4:8], photos[:4]),
    )
    print("perceptual: noisy", noisy.round(3), "blurred", soft.round(3), "another person", other.round(3))
    assert np.allclose(same, 0.0, atol=1e-6)
    assert (noisy < soft).all() and (noisy < other).all() and soft.mean() > 2 * noisy.mean()
