"""Stages 5-6: morph-average an identity's photos; decompose faces into landmarks and texture.

Averaging (the paper): average the photos' landmarks, warp each photo to them with the project's
spline warp, average the pixels. Decomposition: texture = face warped from its landmarks to the
dataset's global mean landmarks. Both use `normalized_faces.warp`, so textures made here and
textures the model renders are the same operation.
"""

from __future__ import annotations

import numpy as np

from normalized_faces import warp


def warp_faces(images: np.ndarray, source_landmarks: np.ndarray, dest_landmarks: np.ndarray) -> np.ndarray:
    """Warps uint8/float images [N, S, S, 3] so landmarks [N, 68, 2] move to dest [N or 1, 68, 2].

    Returns float32 [N, S, S, 3] in the input's scale ([0, 1] for uint8 input).
    """
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    source = np.asarray(source_landmarks, np.float32)
    dest = np.broadcast_to(np.asarray(dest_landmarks, np.float32), source.shape)
    warped, _ = warp.sparse_image_warp(images.astype(np.float32) / scale, source, dest)
    return warped.numpy()


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def average_identity(images: np.ndarray, landmarks: np.ndarray, batch_size: int = 16):
    """Morph-average one identity's aligned photos.

    Args:
      images: [N, S, S, 3] uint8 aligned photos.
      landmarks: [N, 68, 2] their landmarks.

    Returns:
      (average image [S, S, 3] uint8, mean landmarks [68, 2] float64).
    """
    images = np.asarray(images)
    landmarks = np.asarray(landmarks, np.float64)
    if len(images) == 0 or len(images) != len(landmarks):
        raise ValueError(f"need matching, non-empty images and landmarks, got {len(images)} and {len(landmarks)}")
    mean = landmarks.mean(axis=0)
    total = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), batch_size):
        warped = warp_faces(images[start : start + batch_size], landmarks[start : start + batch_size], mean[None])
        total += warped.sum(axis=0)
    return to_uint8(total / len(images)), mean


def texture_of(image: np.ndarray, landmarks: np.ndarray, mean_landmarks: np.ndarray) -> np.ndarray:
    """The face's texture: image [S, S, 3] uint8 warped from its landmarks to the mean. uint8."""
    return to_uint8(
        warp_faces(np.asarray(image)[None], np.asarray(landmarks)[None], np.asarray(mean_landmarks)[None])[0]
    )
