"""Face alignment: undo roll, scale to a fixed interocular distance, crop (the paper: 55 px, 224 x 224).

The aligned frame is the template's (`landmarks.template_landmarks`): the eye centres land exactly
where the template has them, level and `interocular` px apart. Data prep, the encoders' re-framing
and the normalize-face command all use this one function, so "aligned" means the same everywhere.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from normalized_faces import landmarks as lm


@dataclasses.dataclass
class AlignedFace:
    image: np.ndarray  # [size, size, 3], the input's dtype
    landmarks: np.ndarray  # [68, 2] (x, y) in the aligned crop
    photo_to_aligned: np.ndarray  # [2, 3] similarity: aligned (x, y) = M @ [photo x, photo y, 1]
    roll_degrees: float  # the roll that was undone
    scale: float  # aligned px per photo px


def alignment_matrix(landmarks, size=lm.ALIGNED_SIZE, interocular=lm.INTEROCULAR_DISTANCE) -> np.ndarray:
    """The similarity taking this face's eye centres to the template's.

    Args:
      landmarks: [68, 2] (x, y) in the photo.

    Returns:
      [2, 3] matrix M: aligned (x, y) = M @ [x, y, 1].
    """
    right, left = lm.eye_centers(np.asarray(landmarks, np.float64))
    target_right, target_left = lm.eye_centers(lm.template_landmarks(size, interocular))
    source = left - right
    target = target_left - target_right
    distance = np.hypot(*source)
    if not np.isfinite(distance) or distance < 1e-6:
        raise ValueError("cannot align a face whose eye centres coincide (landmarks degenerate)")
    # Complex ratio target / source: rotation and scale in one.
    z = complex(*target) / complex(*source)
    rotation_scale = np.array([[z.real, -z.imag], [z.imag, z.real]])
    translation = target_right - rotation_scale @ right
    return np.concatenate([rotation_scale, translation[:, None]], axis=1)


def align_face(
    image, landmarks, size=lm.ALIGNED_SIZE, interocular=lm.INTEROCULAR_DISTANCE, border=cv2.BORDER_REPLICATE
) -> AlignedFace:
    """Crops the aligned face: eyes level and `interocular` px apart, at the template's eye positions.

    Args:
      image: [H, W, 3] (or [H, W]) photo, any dtype cv2 can warp (uint8, float32).
      landmarks: [68, 2] (x, y) in the photo.
      border: how pixels outside the photo are filled (default: the nearest edge pixel).

    Returns:
      An `AlignedFace`; the crop is bilinearly resampled.
    """
    matrix = alignment_matrix(landmarks, size, interocular)
    aligned = cv2.warpAffine(np.asarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    points = np.asarray(landmarks, np.float64) @ matrix[:, :2].T + matrix[:, 2]
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    roll = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    return AlignedFace(aligned, points, matrix, roll_degrees=-roll, scale=scale)
