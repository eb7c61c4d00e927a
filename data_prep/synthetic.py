"""Procedural face images with known 68-point landmarks, for tests and the demo.

A synthetic identity fixes a face shape (deformation of the template) and colours (skin, hair,
eyes, lips); each photo of it varies roll, scale, position, expression (mouth opening, smile),
lighting and background. The landmarks are exact by construction: the face is drawn from them.

These are cartoons, not people: they exercise geometry, warps, averaging and the data plumbing,
never face recognition (dlib's detector does not fire on them; use a manifest with landmarks).
"""

from __future__ import annotations

import dataclasses
import pathlib

import cv2
import numpy as np

from normalized_faces import data
from normalized_faces import landmarks as lm


@dataclasses.dataclass(frozen=True)
class SyntheticIdentity:
    """What stays fixed across one synthetic person's photos."""

    name: str
    shape: np.ndarray  # [68, 2] neutral frontal landmarks in the aligned 224 frame
    skin: tuple[float, float, float]  # RGB in [0, 1]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]


def random_identity(rng: np.random.Generator, name: str) -> SyntheticIdentity:
    shape = lm.random_face_landmarks(rng, 1, max_rotation_deg=0, max_shift=0, expression=0)[0]
    skin_tone = rng.uniform(0.25, 0.95)
    skin = np.array([0.95, 0.76, 0.62]) * skin_tone + np.array([0.05, 0.04, 0.03])
    return SyntheticIdentity(
        name=name,
        shape=shape,
        skin=tuple(np.clip(skin + rng.normal(0, 0.03, 3), 0, 1)),
        hair=tuple(
            rng.choice([[0.1, 0.07, 0.05], [0.35, 0.2, 0.1], [0.75, 0.6, 0.3], [0.5, 0.5, 0.5]]) * rng.uniform(0.8, 1.1)
        ),
        iris=tuple(rng.choice([[0.25, 0.15, 0.08], [0.2, 0.4, 0.6], [0.3, 0.45, 0.25]])),
        lips=tuple(np.clip(np.array([0.75, 0.35, 0.35]) * rng.uniform(0.7, 1.1), 0, 1)),
    )


def pose_landmarks(
    shape: np.ndarray,
    rng: np.random.Generator,
    size: int = 224,
    roll_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    shift: float = 8.0,
    mouth_open: float = 0.0,
    smile: float = 0.0,
) -> np.ndarray:
    """Places a neutral shape in a `size` photo: expression first, then a random similarity.

    Returns:
      [68, 2] (x, y) landmarks in the photo.
    """
    points = shape.copy()
    lower_lip = [55, 56, 57, 58, 59, 65, 66, 67]
    points[lower_lip, 1] += mouth_open
    for corner, sign in ((48, -1), (54, 1), (60, -1), (64, 1)):
        points[corner] += [sign * 0.5 * smile, -smile]
    centre = shape.mean(axis=0)
    angle = np.deg2rad(rng.uniform(-roll_deg, roll_deg))
    scale = rng.uniform(*scale_range) * size / 224.0
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target_centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0]) + rng.uniform(-shift, shift, 2)
    return target_centre + scale * (points - centre) @ rotation.T


def _poly(points):
    return np.round(np.asarray(points) * 16).astype(np.int32)


def render_face(
    points: np.ndarray,
    identity: SyntheticIdentity,
    size: int = 224,
    background=(0.55, 0.6, 0.7),
    light=(0.0, 0.0),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draws a face whose 68 landmarks are exactly `points`.

    Args:
      points: [68, 2] (x, y) pixel landmarks.
      light: (lx, ly) direction and strength of a linear shading across the face, |l| <~ 0.5.
      rng: if given, adds a little sensor noise.

    Returns:
      [size, size, 3] uint8 RGB.
    """
    s = 16  # cv2 fixed-point shift=4
    canvas = np.empty([size, size, 3], np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    canvas[:] = np.asarray(background, np.float32) * (0.85 + 0.3 * ys[..., None])
    eye_r, eye_l = lm.eye_centers(points)
    interocular = max(np.linalg.norm(eye_l - eye_r), 1.0)
    jaw = points[lm.JAW.start : lm.JAW.stop]
    brows = points[lm.RIGHT_BROW.start : lm.LEFT_BROW.stop]
    up = np.array([-(eye_l - eye_r)[1], (eye_l - eye_r)[0]]) / interocular  # towards the chin
    forehead = brows[::-1] - up * 0.55 * interocular
    head = np.concatenate([jaw, forehead])
    hair = np.concatenate([forehead, (forehead - up * 0.45 * interocular)[::-1]])
    neck = np.array([jaw[5], jaw[11], jaw[11] + up * 1.2 * interocular, jaw[5] + up * 1.2 * interocular])
    cv2.fillPoly(canvas, [_poly(neck)], [c * 0.8 for c in identity.skin], cv2.LINE_AA, shift=4)
    cv2.fillPoly(canvas, [_poly(cv2.convexHull(head.astype(np.float32))[:, 0])], identity.skin, cv2.LINE_AA, shift=4)
    cv2.fillPoly(canvas, [_poly(hair)], identity.hair, cv2.LINE_AA, shift=4)
    thickness = max(1, int(round(interocular / 14)))
    for brow in (lm.RIGHT_BROW, lm.LEFT_BROW):
        cv2.polylines(
            canvas,
            [_poly(points[brow.start : brow.stop])],
            False,
            [c * 0.8 for c in identity.hair],
            thickness,
            cv2.LINE_AA,
            shift=4,
        )
    for eye, centre in ((lm.RIGHT_EYE, eye_r), (lm.LEFT_EYE, eye_l)):
        outline = points[eye.start : eye.stop]
        cv2.fillPoly(canvas, [_poly(outline)], (0.95, 0.95, 0.95), cv2.LINE_AA, shift=4)
        opening = np.linalg.norm(outline[1] - outline[5]) + np.linalg.norm(outline[2] - outline[4])
        radius = int(min(0.11 * interocular, 0.35 * opening + 1) * s)
        cv2.circle(canvas, tuple(int(v) for v in _poly(centre)), radius, identity.iris, -1, cv2.LINE_AA, shift=4)
        cv2.circle(
            canvas, tuple(int(v) for v in _poly(centre)), radius // 2, (0.05, 0.05, 0.05), -1, cv2.LINE_AA, shift=4
        )
        cv2.polylines(canvas, [_poly(outline)], True, (0.2, 0.12, 0.1), 1, cv2.LINE_AA, shift=4)
    nose_shade = [c * 0.75 for c in identity.skin]
    cv2.polylines(
        canvas, [_poly(points[lm.NOSE_BRIDGE.start : lm.NOSE_BRIDGE.stop])], False, nose_shade, 1, cv2.LINE_AA, shift=4
    )
    nose_bottom = points[lm.NOSE_BOTTOM.start : lm.NOSE_BOTTOM.stop]
    cv2.polylines(canvas, [_poly(nose_bottom)], False, nose_shade, 1, cv2.LINE_AA, shift=4)
    for nostril in (nose_bottom[1], nose_bottom[3]):  # points 32 and 34
        cv2.circle(
            canvas,
            tuple(int(v) for v in _poly(nostril)),
            int(0.04 * interocular * s),
            [c * 0.45 for c in identity.skin],
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    cv2.fillPoly(
        canvas, [_poly(points[lm.OUTER_MOUTH.start : lm.OUTER_MOUTH.stop])], identity.lips, cv2.LINE_AA, shift=4
    )
    cv2.fillPoly(
        canvas, [_poly(points[lm.INNER_MOUTH.start : lm.INNER_MOUTH.stop])], (0.25, 0.05, 0.05), cv2.LINE_AA, shift=4
    )
    # Lighting: a linear ramp across the image, as from a light off to one side.
    lx, ly = light
    canvas *= (1.0 + lx * (xs - 0.5) * 2 + ly * (ys - 0.5) * 2)[..., None]
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    if rng is not None:
        canvas += rng.normal(0, 0.01, canvas.shape).astype(np.float32)
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthetic_photo(identity: SyntheticIdentity, rng: np.random.Generator, size: int = 224, **pose_kwargs):
    """One random photo of `identity`: (image [size, size, 3] uint8 RGB, landmarks [68, 2])."""
    pose_kwargs.setdefault("mouth_open", rng.uniform(0, 4))
    pose_kwargs.setdefault("smile", rng.uniform(0, 3))
    points = pose_landmarks(identity.shape, rng, size=size, **pose_kwargs)
    background = tuple(rng.uniform(0.2, 0.9, 3))
    light = tuple(rng.uniform(-0.3, 0.3, 2))
    return render_face(points, identity, size=size, background=background, light=light, rng=rng), points


def write_synthetic_dataset(output_dir, num_identities=6, photos_per_identity=4, seed=0, size=256) -> str:
    """Writes synthetic photos to output_dir/photos/<identity>/NN.png and a JSON-lines manifest
    (path, identity, landmarks) beside them, for data prep without face detection.

    Returns:
      The manifest's path.
    """
    import json

    output_dir = pathlib.Path(output_dir)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_identities):
        identity = random_identity(rng, f"synthetic_{i:03d}")
        folder = output_dir / "photos" / identity.name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(photos_per_identity):
            image, points = synthetic_photo(identity, rng, size=size)
            path = folder / f"{j:02d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            lines.append(
                json.dumps(
                    {
                        "path": f"photos/{identity.name}/{path.name}",
                        "identity": identity.name,
                        "landmarks": np.round(points, 3).tolist(),
                    }
                )
            )
    manifest = output_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def make_tiny_data(data_dir: str, seed: int = 0, mode: str = "morphs") -> None:
    """Runs the real data prep job on synthetic faces (in this process) unless data_dir has records.
    mode: "morphs" (averages + morphs, the paper's) or "photos" (one record per photo, wang2019)."""
    if list(pathlib.Path(data_dir).glob("train-*.tfrecord")) and (pathlib.Path(data_dir) / data.METADATA_FILE).exists():
        return
    from data_prep import job, stages

    photos = pathlib.Path(data_dir) / "photos"
    manifest = write_synthetic_dataset(photos, num_identities=8, photos_per_identity=3, seed=seed)
    config = stages.PrepConfig(num_morphs=40, validation_fraction=0.3, seed=seed, mode=mode)
    summary = job.run(manifest, data_dir, config, ["--direct_running_mode=in_memory"], num_shards=2, preview_count=4)
    print(f"made tiny synthetic data in {data_dir}: {summary['records']}", flush=True)
