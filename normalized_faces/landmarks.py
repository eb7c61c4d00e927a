"""dlib's 68-point landmark layout: index ranges and a procedural frontal template.

The template is a frontal face drawn from simple curves, with proportions checked against the mean
aligned landmarks of 100 LFW photos (every region's mean within ~5 px): it gives tests, the demo,
synthetic faces and the encoders' re-framing a face-shaped point set in the aligned 224 x 224
frame (eyes level, 55 px apart). A dataset's real mean landmarks come from data prep's metadata.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68

# dlib / iBUG 300-W 68-point index ranges (end exclusive).
JAW = range(0, 17)
RIGHT_BROW = range(17, 22)  # subject's right: image left
LEFT_BROW = range(22, 27)
NOSE_BRIDGE = range(27, 31)
NOSE_BOTTOM = range(31, 36)
RIGHT_EYE = range(36, 42)
LEFT_EYE = range(42, 48)
OUTER_MOUTH = range(48, 60)
INNER_MOUTH = range(60, 68)

ALIGNED_SIZE = 224
INTEROCULAR_DISTANCE = 55.0


def _ellipse(cx, cy, rx, ry, start_deg, end_deg, count):
    angles = np.deg2rad(np.linspace(start_deg, end_deg, count))
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=-1)


def _eye(cx, cy, half_width, half_height):
    # dlib order: outer/inner corner first depending on side, then upper lid, other corner, lower lid.
    xs = cx + half_width * np.array([-1.0, -0.4, 0.4, 1.0, 0.4, -0.4])
    ys = cy + half_height * np.array([0.0, -1.0, -1.0, 0.0, 1.0, 1.0])
    return np.stack([xs, ys], axis=-1)


def template_landmarks(size: int = ALIGNED_SIZE, interocular: float = INTEROCULAR_DISTANCE) -> np.ndarray:
    """A frontal 68-point face, eye centres level and `interocular` px apart, centred in `size`.

    Returns:
      [68, 2] float64 (x, y) pixel coordinates.
    """
    s = interocular / 55.0
    cx = (size - 1) / 2.0
    eye_y = cx - 12 * s  # eyes a little above the centre, as in a 224 crop of an aligned face
    points = np.zeros([NUM_LANDMARKS, 2])
    # Jaw: the lower half of an ellipse, image left to right (angles 177 -> 3 pass 90: the chin).
    jaw_angles = np.deg2rad(np.linspace(177, 3, 17))
    points[JAW.start : JAW.stop] = np.stack(
        [cx + 66 * s * np.cos(jaw_angles), eye_y + 1 * s + 106 * s * np.sin(jaw_angles)], axis=-1
    )
    points[RIGHT_BROW.start : RIGHT_BROW.stop] = _ellipse(cx - 27.5 * s, eye_y - 8 * s, 19 * s, 9 * s, 200, 340, 5)
    points[LEFT_BROW.start : LEFT_BROW.stop] = _ellipse(cx + 27.5 * s, eye_y - 8 * s, 19 * s, 9 * s, 200, 340, 5)
    points[NOSE_BRIDGE.start : NOSE_BRIDGE.stop] = np.stack(
        [np.full(4, cx), eye_y + s * np.linspace(2, 32, 4)], axis=-1
    )
    points[NOSE_BOTTOM.start : NOSE_BOTTOM.stop] = np.stack(
        [cx + s * np.array([-13.0, -6.5, 0.0, 6.5, 13.0]), eye_y + s * np.array([38.0, 40.0, 41.0, 40.0, 38.0])],
        axis=-1,
    )
    points[RIGHT_EYE.start : RIGHT_EYE.stop] = _eye(cx - 27.5 * s, eye_y, 11 * s, 4 * s)
    points[LEFT_EYE.start : LEFT_EYE.stop] = _eye(cx + 27.5 * s, eye_y, 11 * s, 4 * s)
    mouth_y = eye_y + 62 * s
    # dlib order: image-left corner, upper lip (y down: angles 180..360), right corner, lower lip.
    outer = _ellipse(cx, mouth_y, 24 * s, 9 * s, 180, 540, 13)[:12]
    points[OUTER_MOUTH.start : OUTER_MOUTH.stop] = outer
    inner = _ellipse(cx, mouth_y, 15 * s, 2.5 * s, 180, 540, 9)[:8]
    points[INNER_MOUTH.start : INNER_MOUTH.stop] = inner
    return points


def _mirror_permutation() -> np.ndarray:
    pairs = list(zip(range(0, 17), range(16, -1, -1)))  # jaw
    pairs += list(zip(range(17, 22), range(26, 21, -1)))  # brows
    pairs += [(i, i) for i in range(27, 31)]  # nose bridge: on the midline
    pairs += list(zip(range(31, 36), range(35, 30, -1)))  # nose bottom
    pairs += list(zip(range(36, 42), [45, 44, 43, 42, 47, 46]))  # right eye <-> left eye, dlib's order
    pairs += list(zip(range(48, 60), [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]))  # outer mouth
    pairs += list(zip(range(60, 68), [64, 63, 62, 61, 60, 67, 66, 65]))  # inner mouth
    mirror = np.empty(NUM_LANDMARKS, np.int64)
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return mirror


# MIRROR[i]: the point that i becomes when the face is flipped left-right (dlib's 68-point layout).
# A symmetric face satisfies flip(points)[MIRROR] == points. Midline points map to themselves.
MIRROR = _mirror_permutation()


# Landmarks that move with the head but not with the expression (iBUG 68-point numbering): the jaw
# above the mouth's corners (the chin drops when the mouth opens), the nose and the eyes; not the
# brows (raised in surprise) or the mouth.
POSE_LANDMARKS = np.r_[0:5, 12:17, 27:48]


def pose_distance(landmarks_a, landmarks_b) -> float:
    """Mean distance in pixels between two faces' POSE_LANDMARKS ([68, 2] each, same image): how far
    the head differs, whatever the expression (the flow VAE's pose-alike pairs; how far an edit
    towards neutral moved the head in data prep)."""
    return float(np.linalg.norm(landmarks_a[POSE_LANDMARKS] - landmarks_b[POSE_LANDMARKS], axis=-1).mean())


def convex_hull_mask(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [height, width]: 1 inside the convex hull of the points [N, 2] (x, y; rounded to whole
    pixels, the border included), 0 elsewhere. The face region the filters measure in, the 3-D
    texture's confidence and the flow VAE's face-only loss start from."""
    import cv2  # only the callers that draw masks need OpenCV

    mask = np.zeros([height, width], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(np.asarray(landmarks)).astype(np.int32)), 1)
    return mask


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the subject's right (image left) and left eye, [..., 2] each."""
    landmarks = np.asarray(landmarks)
    return (
        landmarks[..., RIGHT_EYE.start : RIGHT_EYE.stop, :].mean(axis=-2),
        landmarks[..., LEFT_EYE.start : LEFT_EYE.stop, :].mean(axis=-2),
    )


def random_face_landmarks(
    rng: np.random.Generator,
    batch: int,
    size: int = ALIGNED_SIZE,
    max_rotation_deg: float = 8.0,
    max_scale_change: float = 0.08,
    max_shift: float = 6.0,
    expression: float = 3.0,
) -> np.ndarray:
    """Face-like landmark sets: the template under a random similarity and a smooth deformation.

    For tests, benchmarks and synthetic faces: shapes that vary the way aligned faces do (a little
    roll, scale and shift, wider/narrower features, mouth opening), not independent noise per point.

    Returns:
      [batch, 68, 2] float64 (x, y).
    """
    base = template_landmarks(size)
    centre = base.mean(axis=0)
    out = np.empty([batch, NUM_LANDMARKS, 2])
    for i in range(batch):
        angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
        scale = 1.0 + rng.uniform(-max_scale_change, max_scale_change)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        rel = base - centre
        # Smooth deformation: anisotropic stretch plus a low-frequency bend, then a mouth opening.
        stretch = 1.0 + rng.uniform(-0.06, 0.06, size=2)
        rel = rel * stretch
        rel[:, 0] += rng.uniform(-1, 1) * 2.0 * np.sin(rel[:, 1] / 40.0)
        opening = rng.uniform(0, 1) * expression
        lower_lip = list(range(55, 60)) + list(range(65, 68))
        rel[lower_lip, 1] += opening
        rel[JAW.start + 5 : JAW.stop - 5, 1] += 0.5 * opening
        out[i] = centre + scale * rel @ rotation.T + rng.uniform(-max_shift, max_shift, size=2)
    return out
