"""Automatic photo adjustment (the paper's application): correct a photo's colour using its normalized face.

The normalized face is evenly lit, so its colours are a target for the photo: take the mean
YCrCb colour of a central box of the aligned input face and of the normalized face, and move every
pixel of the photo with a per-channel piecewise-linear map through (0, 0), (input mean, target
mean), (255, 255), in YCrCb.
"""

from __future__ import annotations

import cv2
import numpy as np

from normalized_faces import landmarks as lm


def central_box(size: int = lm.ALIGNED_SIZE) -> tuple[slice, slice]:
    """(rows, cols) of the box between the eyes' outer corners and the mouth in the aligned frame:
    skin and features, no background or hair."""
    points = lm.template_landmarks(size)
    left, right = points[36, 0], points[45, 0]
    top, bottom = (
        points[lm.RIGHT_EYE.start : lm.LEFT_EYE.stop, 1].mean(),
        points[lm.OUTER_MOUTH.start : lm.OUTER_MOUTH.stop, 1].mean(),
    )
    return slice(int(round(top)), int(round(bottom))), slice(int(round(left)), int(round(right)))


def mean_ycrcb(image: np.ndarray, box=None) -> np.ndarray:
    """Mean (Y, Cr, Cb) of an RGB uint8 image's central box: [3] in 0..255."""
    rows, cols = box or central_box(image.shape[0])
    return (
        cv2.cvtColor(np.ascontiguousarray(image[rows, cols]), cv2.COLOR_RGB2YCrCb)
        .reshape(-1, 3)
        .astype(np.float64)
        .mean(axis=0)
    )


def piecewise_linear(values: np.ndarray, source_mean: float, target_mean: float) -> np.ndarray:
    """Maps 0 -> 0, source_mean -> target_mean, 255 -> 255, linearly in between."""
    source_mean = float(np.clip(source_mean, 1.0, 254.0))  # keep both segments non-degenerate
    return np.interp(values, [0.0, source_mean, 255.0], [0.0, float(target_mean), 255.0])


def adjust_photo(photo: np.ndarray, aligned_input: np.ndarray, normalized_face: np.ndarray) -> np.ndarray:
    """The photo (RGB uint8, any size) with its colours moved so the face box matches the normalized face."""
    source = mean_ycrcb(aligned_input)
    target = mean_ycrcb(normalized_face)
    ycrcb = cv2.cvtColor(photo, cv2.COLOR_RGB2YCrCb).astype(np.float64)
    for channel in range(3):
        ycrcb[..., channel] = piecewise_linear(ycrcb[..., channel], source[channel], target[channel])
    return cv2.cvtColor(np.clip(ycrcb + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
