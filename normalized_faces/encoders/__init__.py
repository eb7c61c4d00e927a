"""Frozen face-recognition encoders behind one interface (see `base.FaceEncoder`).

    from normalized_faces.encoders import get_encoder
    encoder = get_encoder("dlib_resnet")             # offline: weights ship with face-recognition-models
    encoder = get_encoder("facenet", weights_path=...)  # FaceNet: weights fetched once by the user
    outputs = encoder(aligned_crops)  # {"features", "embedding", ...}; encoder.threshold

Options common to all: native_input (take the network's own chips), aligned_size, check_range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real import is lazy (see __getattr__)
    from normalized_faces.encoders.base import FaceEncoder

ENCODERS = ("dlib_resnet", "facenet")


def get_encoder(name: str, **options) -> FaceEncoder:
    """Builds the encoder called `name` ('dlib_resnet' or 'facenet') with its pretrained weights.

    Options: weights_path (both), key and cache_folder (facenet), native_input, aligned_size,
    check_range. Raises ValueError for an unknown name and
    facenet.FacenetWeightsNotFound when FaceNet's weights are not on this machine.
    """
    if name == "dlib_resnet":
        from normalized_faces.encoders.dlib_resnet import DlibResNetEncoder

        return DlibResNetEncoder(**options)
    if name == "facenet":
        from normalized_faces.encoders.facenet import FacenetEncoder

        return FacenetEncoder(**options)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def __getattr__(name):
    # Lazy, so `fetch-facenet-weights` (encoders.facenet_weights) does not import TensorFlow.
    if name in ("FaceEncoder", "VerificationThreshold"):
        from normalized_faces.encoders import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENCODERS", "FaceEncoder", "VerificationThreshold", "get_encoder"]
