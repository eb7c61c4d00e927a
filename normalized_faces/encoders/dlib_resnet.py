"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) as a Keras 3 model.

The network (dlib's dnn_face_recognition_ex): 150 x 150 RGB chip -> 7x7/2 conv, 3x3/2 max pool ->
residual stages of 32 (3 blocks), 64 (4), 128 (3), 256 (3) and 256 (1) channels, each stage but the
first opening with a stride-2 block whose shortcut is a 2x2/2 average pool -> global average pool
(256-D: our `features`) -> 128-D fully connected without bias (dlib's face descriptor). Every conv
is followed by a per-channel affine (dlib's frozen batch norm), which we fold into the conv.

Two dlib quirks are reproduced, because parity with dlib is the point:
* dlib's add_prev adds tensors of different shapes by zero-padding the smaller (at the bottom,
  right and in the last channels). In the 256-channel stages the stride-2 conv gives 3x3 (1x1) while
  the average-pooled shortcut gives 4x4 (2x2), so the sum is 4x4 (2x2) with the conv branch in the
  top-left corner: `PaddedAdd`.
* Its input layer maps a uint8 pixel p to (p - mean) / 256 with means (122.782, 117.001, 104.298).

Weights come from the `.dat` file that the face-recognition-models package ships, read by
`dlib_format` (no dlib needed); `tests/test_encoders.py` checks parity with dlib's own
`compute_face_descriptor`.
"""

from __future__ import annotations

import pathlib

import keras
import numpy as np
import tensorflow as tf

from normalized_faces.encoders import dlib_format
from normalized_faces.encoders.base import FaceEncoder, VerificationThreshold

CHIP_SIZE = 150
DESCRIPTOR_DIM = 128
FEATURE_DIM = 256
# (channels, blocks, first block downsamples) in forward order.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def default_weights_path() -> pathlib.Path:
    """The .dat file from the face-recognition-models package (installed with this project)."""
    try:
        import face_recognition_models
    except ImportError as error:  # pragma: no cover - it is a dependency
        raise FileNotFoundError(
            "dlib's face-recognition ResNet weights come from the 'face-recognition-models' package: "
            "pip install face-recognition-models"
        ) from error
    return pathlib.Path(face_recognition_models.face_recognition_model_location())


@keras.saving.register_keras_serializable(package="normalized_faces")
class DlibInputScaling(keras.layers.Layer):
    """[0, 1] RGB -> dlib's input tensor: (255 x - mean) / 256 per channel."""

    def __init__(self, means=(122.782, 117.001, 104.298), **kwargs):
        super().__init__(**kwargs)
        self.means = tuple(float(m) for m in means)

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        return (images * 255.0 - tf.constant(self.means, images.dtype)) / 256.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "means": self.means}


@keras.saving.register_keras_serializable(package="normalized_faces")
class PaddedAdd(keras.layers.Layer):
    """dlib's add_prev: a + b, the smaller zero-padded (bottom, right, last channels) to the larger.

    Inputs [B, H1, W1, C1] and [B, H2, W2, C2] (static H, W, C); output [B, max H, max W, max C].
    """

    def call(self, a, b):
        target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

        def pad(t):
            return tf.pad(t, [[0, 0]] + [[0, n - d] for n, d in zip(target, t.shape[1:])])

        return pad(a) + pad(b)

    def compute_output_shape(self, a_shape, b_shape):
        return (a_shape[0],) + tuple(max(x, y) for x, y in zip(a_shape[1:], b_shape[1:]))


def _expected_layer_kinds():
    """The forward sequence of dlib layer kinds (with conv channels/strides) this port expects."""
    kinds = [("con", 32, 2), ("affine",), ("relu",), ("max_pool",)]
    for channels, blocks, downsample in STAGES:
        for block in range(blocks):
            stride = 2 if (downsample and block == 0) else 1
            kinds += [("con", channels, stride), ("affine",), ("relu",), ("con", channels, 1), ("affine",)]
            if stride == 2:
                kinds.append(("avg_pool",))
            kinds += [("add_prev",), ("relu",)]
    kinds += [("avg_pool",), ("fc",)]
    return kinds


def _check_architecture(network: dlib_format.DlibNetwork, source):
    found = []
    for layer in network.layers:
        if layer.kind == "con":
            found.append(("con", layer.attributes["num_filters"], layer.attributes["stride_y"]))
        else:
            found.append((layer.kind,))
    expected = _expected_layer_kinds()
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        raise dlib_format.DlibFormatError(
            f"{source}: not dlib's face-recognition ResNet v1: layer {first} is "
            f"{found[first] if first < len(found) else 'missing'}, expected "
            f"{expected[first] if first < len(expected) else 'nothing'} ({len(found)} layers, expected {len(expected)})"
        )
    if network.input.attributes.get("nr") not in (None, CHIP_SIZE):
        raise dlib_format.DlibFormatError(
            f"{source}: input size {network.input.attributes['nr']}, expected {CHIP_SIZE}"
        )


def _conv_from_dlib(con: dlib_format.Layer, affine: dlib_format.Layer, name: str):
    """A Keras conv (plus explicit padding if needed) with dlib's conv and affine folded together."""
    attrs = con.attributes
    filters = con.tensors["filters"]  # [out, in, kh, kw]
    gamma = affine.tensors["gamma"].reshape(-1)
    beta = affine.tensors["beta"].reshape(-1)
    kernel = filters.transpose(2, 3, 1, 0) * gamma  # [kh, kw, in, out], affine scale folded in
    bias = con.tensors["biases"] * gamma + beta
    layers = []
    padding = (attrs["padding_y"], attrs["padding_x"])
    if padding != (0, 0):
        layers.append(keras.layers.ZeroPadding2D(padding, name=f"{name}_pad"))
    conv = keras.layers.Conv2D(
        attrs["num_filters"],
        (attrs["nr"], attrs["nc"]),
        strides=(attrs["stride_y"], attrs["stride_x"]),
        padding="valid",
        name=name,
    )
    layers.append(conv)
    return layers, [kernel.astype(np.float32), bias.astype(np.float32)]


def build_dlib_resnet(weights_path=None, name="dlib_resnet") -> keras.Model:
    """The Keras port with dlib's pretrained weights.

    Args:
      weights_path: a dlib_face_recognition_resnet_model_v1.dat; default: the one
        face-recognition-models installed.

    Returns:
      A frozen keras.Model: [B, 150, 150, 3] float RGB in [0, 1] (a dlib face chip / 255) ->
      {"features": [B, 256] global-average-pool output, "descriptor": [B, 128] dlib's descriptor}.
    """
    path = pathlib.Path(weights_path) if weights_path else default_weights_path()
    if not path.exists():
        raise FileNotFoundError(
            f"dlib face-recognition weights not found at {path}. They ship with the "
            "'face-recognition-models' package (dlib_face_recognition_resnet_model_v1.dat, 22,466,066 bytes)."
        )
    network = dlib_format.read_dlib_network(path)
    _check_architecture(network, path)
    means = tuple(network.input.attributes[key] for key in ("avg_red", "avg_green", "avg_blue"))

    inputs = keras.Input([CHIP_SIZE, CHIP_SIZE, 3], name="chip")
    assignments = []  # (keras layer, weights), set once the model is built

    def apply(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    layers = iter(network.layers)
    x = DlibInputScaling(means, name="dlib_input")(inputs)
    stem, weights = _conv_from_dlib(next(layers), next(layers), "stem_conv")
    assignments.append((stem[-1], weights))
    x = apply(stem, x)
    next(layers)  # relu
    x = keras.layers.ReLU(name="stem_relu")(x)
    pool = next(layers).attributes
    x = keras.layers.MaxPool2D((pool["nr"], pool["nc"]), (pool["stride_y"], pool["stride_x"]), name="stem_pool")(x)
    for stage, (_channels, blocks, downsample) in enumerate(STAGES):
        for block in range(blocks):
            prefix = f"stage{stage}_block{block}"
            block_input = x
            first, weights1 = _conv_from_dlib(next(layers), next(layers), f"{prefix}_conv1")
            next(layers)  # relu
            second, weights2 = _conv_from_dlib(next(layers), next(layers), f"{prefix}_conv2")
            assignments += [(first[-1], weights1), (second[-1], weights2)]
            branch = apply(second, keras.layers.ReLU(name=f"{prefix}_relu1")(apply(first, x)))
            shortcut = block_input
            if downsample and block == 0:
                pool = next(layers).attributes
                shortcut = keras.layers.AveragePooling2D(
                    (pool["nr"], pool["nc"]), (pool["stride_y"], pool["stride_x"]), name=f"{prefix}_shortcut_pool"
                )(block_input)
            next(layers)  # add_prev
            next(layers)  # relu
            x = keras.layers.ReLU(name=f"{prefix}_relu2")(PaddedAdd(name=f"{prefix}_add")(branch, shortcut))
    next(layers)  # global avg_pool
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    fc = next(layers)
    dense = keras.layers.Dense(DESCRIPTOR_DIM, use_bias=False, name="descriptor")
    descriptor = dense(features)
    assignments.append((dense, [fc.tensors["weights"].astype(np.float32)]))
    model = keras.Model(inputs, {"features": features, "descriptor": descriptor}, name=name)
    for layer, weights in assignments:
        layer.set_weights(weights)
    model.trainable = False
    return model


# dlib documents it: "pairs of faces with a descriptor distance below 0.6 are the same person",
# which gives 99.38% on LFW (dlib's dnn_face_recognition_ex.cpp and its model card). The number
# is also stored in the model file as the metric loss's distance threshold.
DLIB_THRESHOLD_SOURCE = (
    "dlib dnn_face_recognition_ex.cpp / dlib_face_recognition_resnet_model_v1: Euclidean distance "
    "between 128-D descriptors < 0.6 means same person (99.38% on LFW); also the loss_metric "
    "dist_thresh stored in the model file"
)
# dlib.compute_face_descriptor's default chip: get_face_chip(image, shape, size=150, padding=0.25).
CHIP_PADDING = 0.25


def dlib_chip_to_frame(reference_landmarks, padding=CHIP_PADDING):
    """The similarity from a dlib face chip to a frame holding a face with these landmarks.

    dlib's get_face_chip_details fits its own mean face to the 68 landmarks; we ask it to do that
    for the given landmarks (for aligned crops: the template in our aligned frame), and turn the chip
    details into a matrix with dlib's documented corner convention (get_mapping_to_chip: chip
    corners (0, 0), (cols-1, 0), (cols-1, rows-1) <- the rect's tl, tr, br corners rotated by
    `angle` about its centre).

    Args:
      reference_landmarks: [68, 2] (x, y); dlib takes them rounded to whole pixels.

    Returns:
      [2, 3] matrix: frame (x, y) = M @ [chip x, chip y, 1].
    """
    import dlib

    points = np.asarray(reference_landmarks, np.float64)
    parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
    low, high = points.min(axis=0), points.max(axis=0)
    box = dlib.rectangle(int(low[0]), int(low[1]), int(np.ceil(high[0])), int(np.ceil(high[1])))  # unused by dlib here
    detection = dlib.full_object_detection(box, parts)
    details = dlib.get_face_chip_details(detection, size=CHIP_SIZE, padding=padding)
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0])
    c, s = np.cos(details.angle), np.sin(details.angle)
    rotation = np.array([[c, -s], [s, c]])
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    image_points = (corners - centre) @ rotation.T + centre
    chip_points = np.array([[0.0, 0.0], [details.cols - 1, 0.0], [details.cols - 1, details.rows - 1]])
    # Solve image = M @ [chip, 1] exactly from the three correspondences.
    design = np.concatenate([chip_points, np.ones([3, 1])], axis=1)
    return np.linalg.solve(design, image_points).T


@keras.saving.register_keras_serializable(package="normalized_faces")
class DlibResNetEncoder(FaceEncoder):
    """dlib's face-recognition ResNet, ported to Keras with its pretrained weights (works offline).

    Outputs: features [B, 256] (global average pool), descriptor [B, 128] (dlib's
    compute_face_descriptor), embedding [B, 128] (descriptor / |descriptor|).
    Threshold: 0.6 on the raw descriptor's Euclidean distance (dlib's published figure).
    """

    native_size = CHIP_SIZE
    encoder_name = "dlib_resnet"  # get_encoder's name for it
    threshold = VerificationThreshold(0.6, "descriptor", "euclidean", DLIB_THRESHOLD_SOURCE)

    def __init__(self, weights_path=None, **kwargs):
        super().__init__(**kwargs)
        self.weights_path = None if weights_path is None else str(weights_path)
        self.network = build_dlib_resnet(self.weights_path)

    def weights_file(self) -> str:
        return str(self.weights_path or default_weights_path())

    def chip_to_frame(self, reference_landmarks):
        # dlib.get_face_chip(image, shape, 150, 0.25): what compute_face_descriptor feeds the net.
        return dlib_chip_to_frame(reference_landmarks)

    def _run_network(self, chips):
        outputs = self.network(chips, training=False)
        descriptor = outputs["descriptor"]
        return {
            "features": outputs["features"],
            "descriptor": descriptor,
            "embedding": tf.math.l2_normalize(descriptor, axis=-1),
        }

    def compute_output_spec(self, images):
        batch = images.shape[0]
        return {
            "features": keras.KerasTensor([batch, FEATURE_DIM]),
            "descriptor": keras.KerasTensor([batch, DESCRIPTOR_DIM]),
            "embedding": keras.KerasTensor([batch, DESCRIPTOR_DIM]),
        }

    def get_config(self):
        return {**super().get_config(), "weights_path": self.weights_path}
