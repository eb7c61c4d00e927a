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
        [str(NORMALIZE_FACE), f"--model={exported.parent}", f"--output_dir={out}", f"--manifest={manifest}", "--adjust_colors",
         str(tmp_path / "empty.jpg"), str(tmp_path / "notes.jpg"), str(tmp_path / "wall.png"), str(tmp_path / "missing.jpg")],
        capture_output=True, text=True, timeout=600,
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
    assert any("pair.jpg: 2 faces, normalizing each" in line for line in lines)
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
    summary = evaluate.evaluate(str(exported.parent), evaluate.items_from(manifest=manifest), tmp_path, report=lines.append)
    print("\n".join(lines))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["evaluated"] == 6 and len(report["per_photo"]) == 6
    assert 0.0 <= report["share_under_threshold"] <= 1.0
    assert report["threshold"]["value"] == 0.6 and report["threshold"]["output"] == "descriptor"
    assert report["consistency"]["mean_pairwise_distance_photos"] is not None
    assert all(np.isfinite(p["distance"]) for p in report["per_photo"])
    histogram = cv2.imread(str(tmp_path / "distance_histogram.png"))
    assert histogram is not None and histogram.shape[1] > 400
    assert summary["share_under_threshold"] == report["share_under_threshold"]
