"""FaceNet (keras-facenet's InceptionResNetV1) as a frozen encoder.

The paper's encoder is FaceNet. The public FaceNet is David Sandberg's InceptionResNetV1, which
keras-facenet packages (architecture + converted weights). Its `AvgPool` output (1792-D) is the
lowest layer that is not spatially varying (our `features`); the L2-normalized 512-D bottleneck is
the `embedding`.

Weights are never downloaded here. They are looked for, in order:
  1. `weights_path` given by the user: keras-facenet's `.h5` (weights-only or full model), or
     Sandberg's TensorFlow checkpoint (a `model-...ckpt-N` prefix or the folder holding it),
     converted on the fly;
  2. keras-facenet's own cache (`~/.keras-facenet/<key>/<key>-weights.h5`), checked against the
     sha256 keras-facenet publishes, as keras-facenet does.
When none is there, `FacenetWeightsNotFound` says exactly what to fetch and where to put it.

Preprocessing: the 2018 models were trained with Sandberg's "fixed image standardization",
(x - 127.5) / 128 on 0..255 pixels; keras-facenet's helper uses (x - 127.5) / 127.5. We use the
training-time /128 deliberately (the two differ by 0.4% in scale).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import re

import keras
import numpy as np
import tensorflow as tf

from normalized_faces.encoders.base import FaceEncoder, VerificationThreshold, similarity_from_points

log = logging.getLogger(__name__)

DEFAULT_KEY = "20180402-114759"
DEFAULT_CACHE = "~/.keras-facenet"
CHIP_SIZE = 160
FEATURE_LAYER = "AvgPool"
# The chip is a square around the face's landmark box, this much larger than the box's longer side:
# roughly Sandberg's MTCNN box plus its 32-px margin at 160 px. An approximation of that framing
# (it cannot be exact: MTCNN boxes are per-face); native_input=True bypasses it.
CROP_SCALE = 1.25

THRESHOLD_SOURCE = (
    "Schroff et al., FaceNet (CVPR 2015), sec. 5.7: LFW verification threshold 1.242 on the squared "
    "L2 distance between unit-length embeddings (1.256 on one split), i.e. Euclidean ~1.11. Published "
    "for Google's FaceNet; Sandberg's InceptionResNetV1 is trained with the same loss family and "
    "embedding normalization, but its own LFW threshold is not part of that publication"
)


class FacenetWeightsNotFound(FileNotFoundError):
    """No FaceNet weights where we looked; the message says what to fetch and where to put it."""


def _metadata(key):
    from keras_facenet import metadata

    if key not in metadata.MODEL_METADATA:
        raise ValueError(f"unknown FaceNet key {key!r}; keras-facenet knows {sorted(metadata.MODEL_METADATA)}")
    return metadata.MODEL_METADATA[key]


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_weights_path(key=DEFAULT_KEY, cache_folder=DEFAULT_CACHE) -> pathlib.Path:
    meta = _metadata(key)
    return pathlib.Path(os.path.expanduser(cache_folder)) / meta["dir_name"] / meta["keras_weights_filename"]


def missing_weights_message(key=DEFAULT_KEY, cache_folder=DEFAULT_CACHE, looked_in=()) -> str:
    meta = _metadata(key)
    target = cache_weights_path(key, cache_folder)
    looked = "".join(f"\n  - {place}" for place in looked_in) or f"\n  - {target}"
    return (
        f"FaceNet weights for model {key} were not found. Looked in:{looked}\n"
        "Nothing is downloaded at run time. Fetch one of these on a machine with network access:\n"
        f"  1. keras-facenet's Keras weights: {meta['keras_weights_url']}\n"
        f"     (sha256 {meta['keras_weights_sha256']}), and put it at\n"
        f"     {target}\n"
        "     (keras-facenet's own cache, where it is found automatically), or anywhere and pass its path\n"
        "     as weights_path (get_encoder('facenet', weights_path=...), or --facenet_weights=...).\n"
        f"  2. David Sandberg's TensorFlow checkpoint {key} (github.com/davidsandberg/facenet, 'Pre-trained\n"
        f"     models'; keras-facenet mirrors it as {meta['zip_url']}), unzipped; pass the folder or the\n"
        f"     {meta['reader_prefix']} prefix as weights_path.\n"
        "To work offline without FaceNet, use the dlib encoder: get_encoder('dlib_resnet') (--encoder=dlib_resnet)."
    )


def _find_checkpoint_prefix(folder: pathlib.Path):
    indexes = sorted(folder.glob("*.ckpt-*.index")) or sorted(folder.glob("*.index"))
    return str(indexes[-1])[: -len(".index")] if indexes else None


def resolve_weights(key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE):
    """Where FaceNet's weights are: ("h5" | "checkpoint", path). Raises FacenetWeightsNotFound."""
    meta = _metadata(key)
    if weights_path is not None:
        path = pathlib.Path(os.path.expanduser(str(weights_path)))
        if path.is_dir():
            prefix = _find_checkpoint_prefix(path)
            if prefix:
                return "checkpoint", prefix
            h5_files = sorted(path.glob("*.h5"))
            if h5_files:
                return "h5", str(h5_files[0])
            raise FacenetWeightsNotFound(
                missing_weights_message(key, cache_folder, [f"{path} (a folder with no *.ckpt-*.index or *.h5 file)"])
            )
        if path.suffix in (".h5", ".hdf5") and path.is_file():
            if sha256_of(path) not in (meta["keras_weights_sha256"], meta.get("keras_sha256")):
                log.warning("%s is not keras-facenet's published %s file (sha256 differs); loading it anyway", path, key)
            return "h5", str(path)
        if pathlib.Path(str(path) + ".index").is_file():
            return "checkpoint", str(path)
        raise FacenetWeightsNotFound(missing_weights_message(key, cache_folder, [f"{path} (no such .h5 file or checkpoint)"]))
    cached = cache_weights_path(key, cache_folder)
    if cached.is_file():
        digest = sha256_of(cached)
        if digest != meta["keras_weights_sha256"]:
            raise FacenetWeightsNotFound(
                missing_weights_message(
                    key, cache_folder, [f"{cached} (present but sha256 {digest} != published {meta['keras_weights_sha256']}: corrupt or partial)"]
                )
            )
        return "h5", str(cached)
    checkpoint_folder = cached.parent
    prefix = checkpoint_folder / meta["reader_prefix"]
    if pathlib.Path(str(prefix) + ".index").is_file():
        return "checkpoint", str(prefix)
    raise FacenetWeightsNotFound(missing_weights_message(key, cache_folder, [f"{cached} (missing)", f"{prefix}.index (missing)"]))


def sandberg_variable_to_keras(name: str):
    """Maps a variable of Sandberg's checkpoint to (keras layer name, weight name), or None to skip.

    Sandberg's scopes: InceptionResnetV1/<layer>/<weights|biases>, .../BatchNorm/<beta|moving_*>,
    repeated blocks under Repeat (block35_i), Repeat_1 (block17_i), Repeat_2 (block8_i), the last
    Block8 without a Repeat scope. keras-facenet names layers by joining scopes with '_', the
    repeated blocks as Block35_i / Block17_i / Block8_i and the last one Block8_6.
    """
    parts = name.split("/")
    if parts[0] != "InceptionResnetV1" or len(parts) < 3:
        return None  # global_step, optimizer state, the training-time classifier (Logits)
    weight = {"weights": "kernel", "biases": "bias"}.get(parts[-1], parts[-1])
    if weight not in ("kernel", "bias", "beta", "gamma", "moving_mean", "moving_variance"):
        return None
    scopes = parts[1:-1]
    if re.fullmatch(r"Repeat(_\d+)?", scopes[0]) and len(scopes) > 1:
        scopes = [scopes[1][0].upper() + scopes[1][1:]] + scopes[2:]
    elif scopes[0] == "Block8":
        scopes = ["Block8_6"] + scopes[1:]
    return "_".join(scopes), weight


def load_sandberg_checkpoint(model: keras.Model, prefix: str) -> None:
    """Sets every weight of keras-facenet's InceptionResNetV1 from Sandberg's TF checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    values = {}
    for variable in reader.get_variable_to_shape_map():
        mapped = sandberg_variable_to_keras(variable)
        if mapped is not None:
            values[mapped] = reader.get_tensor(variable)
    missing = []
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = []
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            array = values.get((layer.name, short))
            if array is None:
                missing.append(f"{layer.name}/{short}")
                continue
            if tuple(array.shape) != tuple(weight.shape):
                raise ValueError(f"{prefix}: {layer.name}/{short} has shape {array.shape}, the network wants {tuple(weight.shape)}")
            arrays.append(array)
        if len(arrays) == len(layer.weights):
            layer.set_weights(arrays)
    if missing:
        raise ValueError(
            f"{prefix} is not a FaceNet InceptionResNetV1 checkpoint with this embedding size: "
            f"{len(missing)} weights missing, e.g. {missing[:3]}"
        )


def build_facenet(key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE) -> keras.Model:
    """keras-facenet's network with real weights: [B, 160, 160, 3] in [0, 1] -> {features, embedding}."""
    from keras_facenet.inception_resnet_v1 import InceptionResNetV1

    meta = _metadata(key)
    kind, path = resolve_weights(key, weights_path, cache_folder)
    network = InceptionResNetV1(input_shape=(CHIP_SIZE, CHIP_SIZE, 3), classes=meta["dimensions"])
    if kind == "h5":
        network.load_weights(path)
    else:
        load_sandberg_checkpoint(network, path)
    log.info("FaceNet %s weights loaded from %s (%s)", key, path, kind)
    chips = keras.Input([CHIP_SIZE, CHIP_SIZE, 3], name="chip")
    standardized = keras.layers.Rescaling(255.0 / 128.0, offset=-127.5 / 128.0, name="fixed_image_standardization")(chips)
    inner = keras.Model(network.input, {"features": network.get_layer(FEATURE_LAYER).output, "embedding": network.output})
    model = keras.Model(chips, inner(standardized), name=f"facenet_{key}")
    model.trainable = False
    return model


def facenet_chip_to_frame(reference_landmarks) -> np.ndarray:
    """The similarity from a 160 x 160 FaceNet chip to a frame holding a face with these landmarks.

    The chip is an axis-aligned square around the landmarks' box (CROP_SCALE x its longer side),
    like a detector box with margin: it does not undo roll (Sandberg's MTCNN crops do not either).
    """
    points = np.asarray(reference_landmarks, np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2.0
    side = CROP_SCALE * (high - low).max()
    chip_corners = np.array([[0.0, 0.0], [CHIP_SIZE - 1.0, 0.0], [0.0, CHIP_SIZE - 1.0]])
    half = side / 2.0
    image_corners = centre + np.array([[-half, -half], [half, -half], [-half, half]])
    return similarity_from_points(chip_corners, image_corners)


@keras.saving.register_keras_serializable(package="normalized_faces")
class FacenetEncoder(FaceEncoder):
    """FaceNet through keras-facenet. Outputs: features [B, 1792] (AvgPool), embedding [B, 512].

    Threshold: 1.242 on the squared Euclidean distance between embeddings (FaceNet paper).
    """

    native_size = CHIP_SIZE
    threshold = VerificationThreshold(1.242, "embedding", "squared_euclidean", THRESHOLD_SOURCE)

    def __init__(self, key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        self.weights_path = None if weights_path is None else str(weights_path)
        self.cache_folder = cache_folder
        self.network = build_facenet(key, self.weights_path, cache_folder)
        self.embedding_dim = _metadata(key)["dimensions"]

    def chip_to_frame(self, reference_landmarks):
        return facenet_chip_to_frame(reference_landmarks)

    def _run_network(self, chips):
        outputs = self.network(chips, training=False)
        return {"features": outputs["features"], "embedding": outputs["embedding"]}

    def compute_output_spec(self, images):
        batch = images.shape[0]
        return {
            "features": keras.KerasTensor([batch, 1792]),
            "embedding": keras.KerasTensor([batch, self.embedding_dim]),
        }

    def get_config(self):
        return {**super().get_config(), "key": self.key, "weights_path": self.weights_path, "cache_folder": self.cache_folder}
