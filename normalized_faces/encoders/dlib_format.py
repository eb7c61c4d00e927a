"""A reader for dlib's serialized DNN files (`dlib::serialize(net, out)`), in pure Python.

Written from dlib's documented formats (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h,
loss.h, cuda/tensor.h); no dlib code is used or needed. It reads the layer kinds that dlib's
face-recognition ResNet uses and fails with a message naming anything else.

The stream, for a network loss<L_n<...<L_1<input>>>>:

    int 1, loss details,                      add_loss_layer
    int 2 | int 1 ...                         one per node top-down: add_layer (2), tag/skip (1)
    int 3, input details, L_1 details, state  the bottom add_layer, which holds the input layer
    L_2 details, state ... L_n details, state  the other add_layers, bottom-up

so the layers' details come in forward order. Primitives: integers are a control byte (byte count,
0x80 = negative) then little-endian bytes; bools are '0'/'1'; strings an integer length then the
bytes; float/double a (mantissa int64, exponent int16) pair; tensors version 2, four integers
(num_samples, k, nr, nc) then raw little-endian float32 in NCHW order.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

_FLOAT_SPECIAL_EXPONENTS = {32000: "inf", 32001: "-inf", 32002: "nan"}


class DlibFormatError(ValueError):
    """The file is not a dlib DNN of a kind this reader knows."""


@dataclasses.dataclass
class Layer:
    """One layer's details: `kind` is dlib's name without the version suffix (con, affine, ...)."""

    kind: str
    version: str
    attributes: dict
    tensors: dict  # name -> np.ndarray


@dataclasses.dataclass
class DlibNetwork:
    loss: Layer
    input: Layer
    layers: list  # [Layer], forward order (input side first)
    node_versions: list  # the top-down add_layer (2) / tag-or-skip (1) sequence


class _Stream:
    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, message):
        raise DlibFormatError(f"{self.source}: {message} (at byte {self.pos})")

    def take(self, count):
        if self.pos + count > len(self.data):
            self.fail(f"file ends early: wanted {count} more bytes")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def int(self):
        control = self.take(1)[0]
        size, negative = control & 0x0F, control & 0x80
        if size > 8 or control & 0x70:
            self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little") if size else 0
        return -value if negative else value

    def bool(self):
        byte = bytes(self.take(1))
        if byte not in (b"0", b"1"):
            self.fail(f"bad bool {byte!r}")
        return byte == b"1"

    def string(self):
        length = self.int()
        if not 0 <= length < 1 << 20:
            self.fail(f"implausible string length {length}")
        return bytes(self.take(length)).decode("latin-1")

    def float(self):
        mantissa, exponent = self.int(), self.int()
        if exponent in _FLOAT_SPECIAL_EXPONENTS:
            return float(_FLOAT_SPECIAL_EXPONENTS[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self):
        version = self.int()
        if version != 2:
            self.fail(f"unsupported tensor version {version}")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            self.fail(f"bad tensor shape {shape}")
        count = int(np.prod(shape))
        values = np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def alias_tensor(self):
        version = self.int()
        if version != 1:
            self.fail(f"unsupported alias_tensor version {version}")
        return tuple(self.int() for _ in range(4))


def _split_params(stream, params, *shapes):
    """Slices dlib's flat `params` tensor into consecutive alias tensors of these shapes."""
    flat = params.reshape(-1)
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != flat.size:
        stream.fail(f"params hold {flat.size} values, the aliases {shapes} want {sum(sizes)}")
    out, offset = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return out


def _read_con(stream, version):
    if version not in ("con_4", "con_5", "con_6"):
        stream.fail(f"unsupported convolution version {version!r}")
    params = stream.tensor()
    attributes = {
        "num_filters": stream.int(),
        "nr": stream.int(),
        "nc": stream.int(),
        "stride_y": stream.int(),
        "stride_x": stream.int(),
        "padding_y": stream.int(),
        "padding_x": stream.int(),
    }
    filters_shape, biases_shape = stream.alias_tensor(), stream.alias_tensor()
    for name in (
        "learning_rate_multiplier",
        "weight_decay_multiplier",
        "bias_learning_rate_multiplier",
        "bias_weight_decay_multiplier",
    ):
        attributes[name] = stream.float()
    attributes["use_bias"] = stream.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
        attributes["use_relu"] = stream.bool()
    filters, biases = _split_params(stream, params, filters_shape, biases_shape)
    return attributes, {"filters": filters, "biases": biases.reshape(-1)}  # filters [out, in, nr, nc]


def _read_affine(stream, version):
    if version not in ("affine_", "affine_2"):
        stream.fail(f"unsupported affine version {version!r} (batch-norm layers are not supported)")
    params = stream.tensor()
    gamma_shape, beta_shape = stream.alias_tensor(), stream.alias_tensor()
    attributes = {"mode": stream.int()}  # 0: per-channel (CONV_MODE), 1: per-element (FC_MODE)
    if version == "affine_2":
        attributes["disabled"] = stream.bool()
    gamma, beta = _split_params(stream, params, gamma_shape, beta_shape)
    return attributes, {"gamma": gamma, "beta": beta}


def _read_pool(stream, version):
    if not version.endswith("_2"):
        stream.fail(f"unsupported pooling version {version!r}")
    keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return {key: stream.int() for key in keys}, {}


def _read_relu(stream, version):
    if version == "relu_2":
        return {"disabled": stream.bool()}, {}
    if version != "relu_":
        stream.fail(f"unsupported relu version {version!r}")
    return {}, {}


def _read_add_prev(stream, version):
    return {}, {}


def _read_fc(stream, version):
    if version not in ("fc_2", "fc_3"):
        stream.fail(f"unsupported fully connected version {version!r}")
    attributes = {"num_outputs": stream.int(), "num_inputs": stream.int()}
    params = stream.tensor()
    weights_shape, biases_shape = stream.alias_tensor(), stream.alias_tensor()
    attributes["bias_mode"] = stream.int()  # 0: has bias, 1: no bias
    for name in (
        "learning_rate_multiplier",
        "weight_decay_multiplier",
        "bias_learning_rate_multiplier",
        "bias_weight_decay_multiplier",
    ):
        attributes[name] = stream.float()
    if version == "fc_3":
        attributes["use_bias"] = stream.bool()
    has_bias = attributes["bias_mode"] == 0
    shapes = (weights_shape, biases_shape) if has_bias else (weights_shape,)
    parts = _split_params(stream, params, *shapes)
    # dlib multiplies input rows by weights [num_inputs, num_outputs].
    tensors = {"weights": parts[0].reshape(attributes["num_inputs"], attributes["num_outputs"])}
    if has_bias:
        tensors["biases"] = parts[1].reshape(-1)
    return attributes, tensors


_LAYER_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "relu": _read_relu,
    "add_prev": _read_add_prev,
    "fc": _read_fc,
}


def _kind(version: str) -> str:
    # "con_4" -> "con", "max_pool_2" -> "max_pool", "relu_" -> "relu", "add_prev_" -> "add_prev"
    base = version.rstrip("0123456789")
    return base[:-1] if base.endswith("_") else base


def _read_details(stream):
    version = stream.string()
    kind = _kind(version)
    reader = _LAYER_READERS.get(kind)
    if reader is None:
        stream.fail(f"layer {version!r} is not supported by this reader (supported: {sorted(_LAYER_READERS)})")
    attributes, tensors = reader(stream, version)
    return Layer(kind, version, attributes, tensors)


def _read_loss(stream):
    version = stream.int()
    if version != 1:
        stream.fail(f"expected a network with a loss layer (add_loss_layer version 1), got version {version}")
    name = stream.string()
    if name == "loss_metric_2":
        return Layer("loss_metric", name, {"margin": stream.float(), "dist_thresh": stream.float()}, {})
    if name == "loss_metric_":
        return Layer("loss_metric", name, {"margin": 0.1, "dist_thresh": 0.75}, {})
    stream.fail(f"loss {name!r} is not supported by this reader")


def _read_input(stream):
    name = stream.string()
    if name not in ("input_rgb_image", "input_rgb_image_sized"):
        stream.fail(f"input layer {name!r} is not supported by this reader")
    attributes = {"avg_red": stream.float(), "avg_green": stream.float(), "avg_blue": stream.float()}
    if name == "input_rgb_image_sized":
        attributes["nr"], attributes["nc"] = stream.int(), stream.int()
    return Layer("input_rgb_image", name, attributes, {})


def read_dlib_network(path) -> DlibNetwork:
    """Reads a dlib DNN file (e.g. dlib_face_recognition_resnet_model_v1.dat).

    Raises:
      FileNotFoundError: no such file.
      DlibFormatError: the file is not a dlib network made of the supported layers, or is cut short.
    """
    path = pathlib.Path(path)
    stream = _Stream(path.read_bytes(), str(path))
    loss = _read_loss(stream)
    node_versions = []
    while True:
        version = stream.int()
        if version == 3:  # the bottom add_layer, holding the input layer
            break
        if version not in (1, 2):
            stream.fail(f"unexpected node version {version}")
        node_versions.append(version)
        if len(node_versions) > 10000:
            stream.fail("no input layer found")
    input_layer = _read_input(stream)
    layers = []

    def read_layer_and_state(bottom):
        layers.append(_read_details(stream))
        for _ in range(3):  # setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
            stream.bool()
        for _ in range(3):  # x_grad, cached_output, then grad_final (bottom) or params_grad (version 2)
            stream.tensor()
        if bottom:
            stream.int()  # _sample_expansion_factor

    read_layer_and_state(bottom=True)
    for _ in range(node_versions.count(2)):
        read_layer_and_state(bottom=False)
    if stream.pos != len(stream.data):
        stream.fail(f"{len(stream.data) - stream.pos} unread bytes after the network")
    return DlibNetwork(loss=loss, input=input_layer, layers=layers, node_versions=node_versions)
