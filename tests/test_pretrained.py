"""The shipped model: packaging a run, loading it, and normalize-face / export / evaluation without --model."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from normalized_faces import inference, pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = REPO / "normalized_faces" / "samples"
needs_shipped_model = pytest.mark.skipif(
    not pretrained.is_available(),
    reason=f"no shipped model in {pretrained.PRETRAINED_DIR} (python -m normalized_faces.pretrained --run=... makes it)",
)


def _faces(size, count=3, seed=0):
    return tf.random.stateless_uniform([count, size, size, 3], seed=[seed, 1])


def test_a_packaged_run_gives_the_runs_outputs(trained_run, tmp_path):
    """float16 storage moves the texture by well under a grey level and landmarks by < 0.05 px."""
    provenance = pretrained.package_run(trained_run, tmp_path / "package")
    assert provenance["step"] == 10 and provenance["weights"]["dtype"] == "float16"
    files = sorted(p.name for p in (tmp_path / "package").iterdir())
    assert files == sorted(
        [pretrained.CONFIG_FILE, pretrained.WEIGHTS_FILE, pretrained.MEAN_FACE_FILE, pretrained.PROVENANCE_FILE]
    )
    run = inference.restore_training_model(trained_run)
    shipped = pretrained.build_model(tmp_path / "package")
    images = _faces(run.image_size)
    ours, theirs = run(images), shipped(images)
    assert float(tf.reduce_max(tf.abs(ours["texture"] - theirs["texture"]))) * 255 < 0.5
    assert float(tf.reduce_max(tf.abs(ours["landmarks"] - theirs["landmarks"]))) < 0.05
    np.testing.assert_array_equal(
        ours["embedding"].numpy(), theirs["embedding"].numpy()
    )  # the encoder is not packaged: same weights


def test_packaging_refuses_a_model_over_the_size_limit(trained_run, tmp_path):
    with pytest.raises(ValueError, match="over the 0.01 MB the package may ship"):
        pretrained.package_run(trained_run, tmp_path / "package", max_megabytes=0.01)
    assert not (tmp_path / "package" / pretrained.WEIGHTS_FILE).exists()


def test_weights_that_do_not_fit_the_config_are_refused(trained_run, tmp_path):
    pretrained.package_run(trained_run, tmp_path / "package")
    config = json.loads((tmp_path / "package" / pretrained.CONFIG_FILE).read_text())
    config["feature_dim"] = config["feature_dim"] * 2
    (tmp_path / "package" / pretrained.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape"):
        pretrained.build_model(tmp_path / "package")
    with pytest.raises(FileNotFoundError, match="no shipped model"):
        pretrained.build_model(tmp_path / "nothing")


@needs_shipped_model
def test_shipped_model_fits_its_limit_and_loads():
    size = sum(p.stat().st_size for p in pretrained.PRETRAINED_DIR.iterdir() if p.is_file()) / 2**20
    assert size <= pretrained.MAX_MEGABYTES
    model = inference.load_model()
    assert model.kind == "pretrained" and model.encoder_name == "facenet" and model.mean_face is not None
    out = model(np.zeros([1, model.image_size, model.image_size, 3], np.float32))
    assert out["normalized_face"].shape == (1, model.image_size, model.image_size, 3)


@needs_shipped_model
@pytest.mark.slow
def test_normalize_face_without_model_on_the_bundled_samples(tmp_path):
    """The command a user runs first: the shipped model, real photos, no --model."""
    photos = sorted(str(p) for p in SAMPLES.glob("*.jpg"))
    assert len(photos) >= 3
    result = subprocess.run(
        [sys.executable, "-m", "normalized_faces.cli", f"--output_dir={tmp_path}", "--adjust_colors", *photos],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the shipped model" in result.stdout
    assert (tmp_path / "grid.png").exists()
    normalized = sorted(tmp_path.glob("*.png"))
    assert len([p for p in normalized if not p.stem.endswith("_adjusted") and p.name != "grid.png"]) == len(photos)


@needs_shipped_model
@pytest.mark.slow
def test_shipped_model_exports_for_serving_without_a_training_run(tmp_path):
    from export import saved_model

    target = saved_model.export(None, tmp_path / "exports")
    metadata = json.loads((target / inference.EXPORT_METADATA).read_text())
    assert metadata["model_dir"] == pretrained.SOURCE and (target / inference.EXPORT_MEAN_FACE).exists()
    shipped, exported = inference.load_model(), inference.load_model(str(tmp_path / "exports"))
    images = np.asarray(_faces(shipped.image_size, 2))
    a, b = shipped(images), exported(images)
    assert np.abs(a["normalized_face"].astype(int) - b["normalized_face"]).max() <= 1
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-3)
