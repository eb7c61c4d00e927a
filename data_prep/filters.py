"""Stage 4: keep frontal, neutral, sharp, colour photos; measure each property on the aligned face.

The paper filtered with a cloud API (monochrome, blurry, emotional, eyeglasses, large pan/tilt);
these are local equivalents, each a number compared to a threshold (a pipeline flag):

  head pose    yaw and pitch from cv2.solvePnP of 14 landmarks against a generic 3-D face
  mouth open   inner-lip gap / mouth width
  smile        how far the mouth corners sit above the lips' centre line, / mouth width
  eyes closed  eye aspect ratio (lid gap / eye width), the more open eye
  blur         variance of the Laplacian of the grey face region, at the photo's own resolution
               (the aligned crop upsamples small faces, which would read as blur)
  monochrome   mean chroma (distance from grey in YCrCb) of the face region
  eyeglasses   horizontal-edge strength on the nose bridge between the eyes (where a frame's
               bridge sits) relative to the face's, see `glasses`
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from normalized_faces import alignment
from normalized_faces import landmarks as lm
from normalized_faces.config_flags import option
from normalized_faces.expressions import mouth_open, smile

# A generic 3-D face (millimetres, x right, y up, z towards the camera; nose tip at the origin) for
# the 68-point indices below: average adult proportions, enough to read yaw and pitch to a few
# degrees. Not a measured model of anyone.
_POSE_INDICES = [30, 8, 36, 45, 48, 54, 27, 33, 39, 42, 31, 35, 0, 16]
_POSE_MODEL = np.array(
    [
        [0.0, 0.0, 0.0],  # 30 nose tip
        [0.0, -63.6, -12.5],  # 8 chin
        [-43.3, 32.7, -26.0],  # 36 right eye, outer corner (image left)
        [43.3, 32.7, -26.0],  # 45 left eye, outer corner
        [-28.9, -28.9, -24.1],  # 48 mouth corner
        [28.9, -28.9, -24.1],  # 54 mouth corner
        [0.0, 33.0, -18.0],  # 27 nose bridge top
        [0.0, -10.0, -8.0],  # 33 below the nose
        [-13.0, 32.0, -24.0],  # 39 right eye, inner corner
        [13.0, 32.0, -24.0],  # 42 left eye, inner corner
        [-10.0, -8.0, -12.0],  # 31 nostril wing
        [10.0, -8.0, -12.0],  # 35 nostril wing
        [-70.0, 30.0, -95.0],  # 0 jaw at the right temple
        [70.0, 30.0, -95.0],  # 16 jaw at the left temple
    ]
)


@dataclasses.dataclass(frozen=True)
class FilterThresholds:
    """Defaults calibrated on LFW's train people (5,301 photos with a face; never the test people)
    with contact sheets of the photos just inside and just outside each threshold
    (benchmarks/filter_calibration.py; README "Data prep filters" has the acceptance figures)."""

    # degrees: at 25 the dropped looked near-frontal, at 30 the kept looked turned
    max_yaw: float = option(27.0, "Filter: largest |yaw| in degrees (head pose from landmarks).")
    max_pitch: float = option(20.0, "Filter: largest |pitch| in degrees.")
    # closed: < 0.1; talking, toothy smiles: 0.2-0.6
    max_mouth_open: float = option(0.2, "Filter: largest inner-lip gap / mouth width.")
    # neutral: -0.05..0.1; the dropped side at 0.15: smiles
    max_smile: float = option(0.15, "Filter: largest mouth-corner lift / mouth width.")
    min_eye_open: float = option(0.15, "Filter: smallest eye aspect ratio (open: 0.2-0.45; closed eyes below ~0.15).")
    # LFW: 5%-95% of faces 33-209
    min_sharpness: float = option(
        15.0, "Filter: smallest variance of the Laplacian of the face's 0..255 grey at the photo's resolution (blur)."
    )
    min_chroma: float = option(
        4.0, "Filter: smallest mean |(Cr, Cb) - 128| of the face (colour faces: 15-50; monochrome ~0)."
    )
    # above 1.0 nearly all wear glasses; thin frames score lower and pass
    max_glasses: float = option(
        1.0, "Filter: largest nose-bridge edge strength / the face's (eyeglasses; clear frames score > 1)."
    )


def head_pose(aligned_landmarks: np.ndarray, size: int = lm.ALIGNED_SIZE) -> tuple[float, float]:
    """(yaw, pitch) in degrees; 0 = looking at the camera, yaw > 0 turned to the image right."""
    image_points = np.asarray(aligned_landmarks, np.float64)[_POSE_INDICES]
    focal = float(size)
    camera = np.array([[focal, 0, size / 2.0], [0, focal, size / 2.0], [0, 0, 1]])
    # Model y is up, image y is down: flip the model's y so the rotation is near identity when frontal.
    model = _POSE_MODEL * [1.0, -1.0, -1.0]
    ok, rotation_vector, _ = cv2.solvePnP(model, image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return 90.0, 90.0
    rotation, _ = cv2.Rodrigues(rotation_vector)
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    return float(yaw), float(pitch)


def eye_openness(points: np.ndarray) -> float:
    def ratio(eye):
        p = points[eye.start : eye.stop]
        return (np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (
            2.0 * max(np.linalg.norm(p[0] - p[3]), 1e-6)
        )

    return float(max(ratio(lm.RIGHT_EYE), ratio(lm.LEFT_EYE)))


def _face_mask(image_shape, points):
    return lm.convex_hull_mask(points, *image_shape[:2]).astype(bool)


def sharpness(image: np.ndarray, points: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    laplacian = cv2.Laplacian(grey, cv2.CV_64F)
    return float(laplacian[_face_mask(image.shape, points)].var())


def chroma(image: np.ndarray, points: np.ndarray) -> float:
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float64)
    mask = _face_mask(image.shape, points)
    return float(np.hypot(ycrcb[..., 1][mask] - 128.0, ycrcb[..., 2][mask] - 128.0).mean())


def source_resolution_crop(
    photo: np.ndarray,
    photo_points: np.ndarray,
    size: int = lm.ALIGNED_SIZE,
    interocular: float = lm.INTEROCULAR_DISTANCE,
):
    """The aligned crop's framing at no more than the photo's own scale (downsampled, never
    upsampled): what sharpness is measured on, so a small sharp face does not read as blurry."""
    right, left = lm.eye_centers(np.asarray(photo_points, np.float64))
    scale = min(1.0, float(np.linalg.norm(left - right)) / interocular)
    return alignment.align_face(photo, photo_points, max(16, int(round(size * scale))), interocular * scale)


def glasses(image: np.ndarray, points: np.ndarray) -> float:
    """Eyeglasses: mean |vertical gradient| on the nose bridge between the inner eye corners, at
    and just above eye level (where a frame's bridge crosses the nose), over the mean gradient
    magnitude of the whole face region. Bare skin there is smooth (~0.3-0.6); a bridge is a
    horizontal edge across it."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    dy = np.abs(cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3))
    dx = np.abs(cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3))
    inner_right, inner_left = points[39], points[42]
    width = inner_left[0] - inner_right[0]
    x0, x1 = int(round(inner_right[0] + 0.25 * width)), int(round(inner_left[0] - 0.25 * width))
    eye_y = (inner_right[1] + inner_left[1]) / 2.0
    brow_y = (points[21, 1] + points[22, 1]) / 2.0
    y0, y1 = int(round(brow_y + 0.3 * (eye_y - brow_y))), int(round(eye_y + 0.15 * width))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    face = np.hypot(dx, dy)[_face_mask(image.shape, points)].mean()
    return float(dy[y0:y1, x0:x1].mean() / max(face, 1e-6))


def measure(image: np.ndarray, points: np.ndarray, source=None) -> dict:
    """All the filter measures of one aligned face (uint8 RGB image, its 68 landmarks).

    source: (photo, its landmarks) the crop was aligned from; sharpness is then measured at the
    photo's resolution (source_resolution_crop). Without it, on the crop as given.
    """
    yaw, pitch = head_pose(points, image.shape[0])
    sharp_image, sharp_points = image, points
    if source is not None:
        crop = source_resolution_crop(*source, size=image.shape[0])
        sharp_image, sharp_points = crop.image, crop.landmarks
    return {
        "yaw": yaw,
        "pitch": pitch,
        "mouth_open": mouth_open(points),
        "smile": smile(points),
        "eye_open": eye_openness(points),
        "sharpness": sharpness(sharp_image, sharp_points),
        "chroma": chroma(image, points),
        "glasses": glasses(image, points),
    }


def first_failure(measures: dict, thresholds: FilterThresholds):
    """The first failed filter as (reason, value, threshold), or None when the photo passes."""
    checks = [
        ("monochrome", measures["chroma"] < thresholds.min_chroma, measures["chroma"], thresholds.min_chroma),
        ("head_pose_yaw", abs(measures["yaw"]) > thresholds.max_yaw, measures["yaw"], thresholds.max_yaw),
        ("head_pose_pitch", abs(measures["pitch"]) > thresholds.max_pitch, measures["pitch"], thresholds.max_pitch),
        ("blurry", measures["sharpness"] < thresholds.min_sharpness, measures["sharpness"], thresholds.min_sharpness),
        ("eyes_closed", measures["eye_open"] < thresholds.min_eye_open, measures["eye_open"], thresholds.min_eye_open),
        (
            "mouth_open",
            measures["mouth_open"] > thresholds.max_mouth_open,
            measures["mouth_open"],
            thresholds.max_mouth_open,
        ),
        ("smiling", measures["smile"] > thresholds.max_smile, measures["smile"], thresholds.max_smile),
        ("eyeglasses", measures["glasses"] > thresholds.max_glasses, measures["glasses"], thresholds.max_glasses),
    ]
    for reason, failed, value, threshold in checks:
        if failed:
            return reason, float(value), float(threshold)
    return None
