"""normalize-face, evaluation and photo adjustment, end to end."""

import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import shared_path

from data_prep import synthetic
from normalized_faces import adjust, alignment, cli, evaluate

NORMALIZE_FACE = pathlib.Path(sys.executable).parent / "normalize-face"


@pytest.fixture(scope="module")
def synthetic_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    manifest = synthetic.write_synthetic_dataset(folder, num_identities=3, photos_per_identity=2, seed=42)
    return folder, manifest


def test_normalize_face_command_on_synthetic_photos_with_bad_inputs(exported, synthetic_photos, tmp_path):
    folder, manifest = synthetic_photos
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo")
    cv2.imwrite(str(tmp_path / "wall.png"), np.full([120, 160, 3], 200, np.uint8))
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(NORMALIZE_FACE),
            f"--model={exported.parent}",
            f"--output_dir={out}",
            f"--manifest={manifest}",
            "--adjust_colors",
            str(tmp_path / "empty.jpg"),
            str(tmp_path / "notes.jpg"),
            str(tmp_path / "wall.png"),
            str(tmp_path / "missing.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr  # some photos failed
    lines = result.stdout
    assert "empty.jpg: cannot read it: empty_file" in lines
    assert "notes.jpg: cannot read it: not_an_image" in lines
    assert "wall.png: no face found" in lines
    assert "missing.jpg: no such file" in lines
    assert "normalized 6 faces from 6 of 10 photos" in lines and "4 photos failed" in lines
    written = sorted(p.name for p in out.glob("*.png"))
    assert "grid.png" in written and len([n for n in written if n.endswith("_adjusted.png")]) == 6
    face = cv2.imread(str(out / "synthetic_000_00.png"))  # same file names in several folders: prefixed
    assert face.shape == (224, 224, 3) and face.std() > 5
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] > 6 * 224  # a row per face


def test_normalize_face_on_real_photos_with_detection(exported, tmp_path):
    lfw = shared_path("faces", "lfw10")
    photos = sorted(lfw.glob("*/*_0001.jpg"))[:3]
    pair = tmp_path / "pair.jpg"
    cv2.imwrite(str(pair), np.concatenate([cv2.imread(str(photos[0])), cv2.imread(str(photos[1]))], axis=1))
    lines = []
    code = cli.run(str(exported), str(tmp_path / "out"), [str(p) for p in photos] + [str(pair)], report=lines.append)
    print("\n".join(lines))
    assert code == 0
    assert any("pair.jpg: 2 faces, working on each" in line for line in lines)
    assert (tmp_path / "out" / "pair_face0.png").exists() and (tmp_path / "out" / "pair_face1.png").exists()
    assert (tmp_path / "out" / "grid.png").exists()


def test_photo_adjustment_removes_a_colour_cast(rng):
    photo, points = synthetic.synthetic_photo(synthetic.random_identity(rng, "a"), rng, size=256)
    target = alignment.align_face(photo, points).image  # stands in for the evenly lit normalized face
    cast = np.clip(photo.astype(np.float64) * [1.25, 1.0, 0.75] + [10, 0, -10], 0, 255).astype(np.uint8)
    cast_aligned = alignment.align_face(cast, points).image
    before = np.abs(adjust.mean_ycrcb(cast_aligned) - adjust.mean_ycrcb(target))
    adjusted = adjust.adjust_photo(cast, cast_aligned, target)
    after = np.abs(adjust.mean_ycrcb(alignment.align_face(adjusted, points).image) - adjust.mean_ycrcb(target))
    print(f"face box YCrCb error: cast {before.round(1)} -> adjusted {after.round(2)}")
    assert before.max() > 10
    # The map sends the box's mean exactly to the target; what remains is the spread of values
    # around the mean meeting a piecewise (not affine) map, and uint8 rounding: within 1.5 levels.
    assert after.max() < 1.5
    assert adjust.piecewise_linear(np.array([0.0, 100.0, 255.0]), 100.0, 120.0).tolist() == [0.0, 120.0, 255.0]


def test_evaluation_writes_histogram_and_report(exported, synthetic_photos, tmp_path):
    _, manifest = synthetic_photos
    lines = []
    summary = evaluate.evaluate(
        str(exported.parent),
        evaluate.items_from(manifest=manifest),
        tmp_path,
        judges=["dlib_resnet"],
        report=lines.append,
    )
    print("\n".join(lines))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["evaluated"] == 6 and len(report["per_photo"]) == 6
    assert report["trained_with"] == "dlib_resnet" and report["lead_judge"] == "dlib_resnet"
    figures = report["judges"]["dlib_resnet"]
    assert figures["threshold"]["value"] == 0.6 and figures["threshold"]["output"] == "descriptor"
    assert figures["trained_with_this_judge"] is True
    for key in ("genuine", "impostor", "rank1", "rank5"):
        assert 0.0 <= figures["normalized"][key] <= 1.0
        assert 0.0 <= figures["mean_face_baseline"][key] <= 1.0  # the tiny run kept its mean face
    assert figures["people"] == 3 and figures["probes"] == 3 and figures["chance"]["rank1"] == pytest.approx(1 / 3)
    assert figures["consistency"]["mean_pairwise_distance_photos"] is not None
    assert all(np.isfinite(p["dlib_resnet_distance"]) for p in report["per_photo"])
    histogram = cv2.imread(str(tmp_path / "distance_histogram.png"))
    assert histogram is not None and histogram.shape[1] > 400
    assert summary["judges"]["dlib_resnet"]["normalized"] == figures["normalized"]
    assert lines[1].startswith("judged by dlib_resnet") and "identification rank-1" in lines[2]


def test_default_judges_lead_with_one_the_model_was_not_trained_with():
    assert evaluate.default_judges("facenet") == ["dlib_resnet", "facenet"]
    assert evaluate.default_judges("dlib_resnet") == ["facenet", "dlib_resnet"]


def _people_vectors(rng, people=20, photos_each=4, dim=16, spread=0.3):
    """Unit vectors: each person a random centre, each photo the centre plus noise."""
    centres = rng.normal(size=[people, dim])
    vectors, labels = [], []
    for p in range(people):
        for _ in range(photos_each):
            v = centres[p] + spread * rng.normal(size=dim)
            vectors.append(v / np.linalg.norm(v))
            labels.append(f"person{p}")
    labels = np.array(labels)
    gallery = np.zeros(len(labels), bool)
    gallery[::photos_each] = True
    return np.array(vectors), labels, gallery


def test_a_mean_face_cannot_pass_the_evaluation(rng):
    """The figures separate an identity-keeping normalizer from one that outputs the same face for all."""
    from normalized_faces.encoders.base import VerificationThreshold

    photos, people, gallery = _people_vectors(rng)
    threshold = VerificationThreshold(1.0, "embedding", "squared_euclidean", "test")
    mean = photos.mean(0) / np.linalg.norm(photos.mean(0))
    keeps = photos + 0.1 * rng.normal(size=photos.shape)
    keeps /= np.linalg.norm(keeps, axis=1, keepdims=True)
    good = evaluate.judge_figures("test", threshold, photos, keeps, people, gallery, mean)
    constant = evaluate.judge_figures(
        "test", threshold, photos, np.repeat(mean[None], len(people), 0), people, gallery, mean
    )
    print(good["normalized"], good["mean_face_baseline"], good["photos_ceiling"])
    assert good["normalized"]["rank1"] > 0.9 and good["normalized"]["impostor"] < 0.1
    assert good["photos_ceiling"]["rank1"] > 0.9
    # The mean face in place of every output is exactly the baseline, and it identifies one person
    # at best: rank-1 <= 1 / people (20 people, 3 probes each).
    assert constant["normalized"]["rank1"] == good["mean_face_baseline"]["rank1"] <= 1 / 20
    assert constant["normalized"]["genuine"] == good["mean_face_baseline"]["genuine"]
    assert good["normalized"]["rank1"] - good["mean_face_baseline"]["rank1"] > 0.8
    # Ties count against the probe: a probe equidistant from every gallery entry ranks nobody first.
    assert evaluate.rank_accuracy(np.zeros([2, 3]), ["a", "b"], np.eye(3)[:2], ["a", "b"], threshold)["rank1"] == 0.0


def test_auto_detector_falls_back_to_the_cnn_where_hog_finds_no_face():
    from normalized_faces.detection import FaceDetector

    # An LFW photo where dlib's HOG detector finds no face (found by benchmarks/facenet_lfw.py).
    photo = cv2.cvtColor(
        cv2.imread(str(shared_path("faces", "lfw", "Arlen_Specter", "Arlen_Specter_0003.jpg"))), cv2.COLOR_BGR2RGB
    )
    assert FaceDetector("hog")(photo) == []
    faces = FaceDetector("auto")(photo)
    assert len(faces) >= 1 and faces[0].landmarks.shape == (68, 2)
    assert FaceDetector("auto")(np.full([200, 200, 3], 128, np.uint8)) == []  # still nothing on a blank
    with pytest.raises(ValueError, match="choose one of hog, cnn, auto"):
        FaceDetector("mtcnn")
