"""The model: frozen encoder -> head -> landmark and texture decoders -> spline warp -> face.

  photo [B, 224, 224, 3] -> encoder (frozen) -> features [B, F_enc]
  features -> EncoderHead: fully connected + ReLU -> h [B, feature_dim]
  h -> LandmarkDecoder: shallow MLP -> offsets from the mean landmarks -> landmarks [B, 68, 2]
  h -> TextureDecoder: the paper's CNN (or its fully connected ablation) -> texture [B, 224, 224, 3],
       registered to the mean landmarks
  texture, mean landmarks -> predicted landmarks (SparseImageWarp, order 1) -> rendered face

Losses (NormalizedFaceModel.train_step): landmark MSE (in units of the image size, squared),
texture MAE, and the identity loss 1 - cos(embedding(photo), embedding(rendered)) (the paper's
negative cosine similarity, offset by 1 so it is >= 0; same gradients). With the identity loss off
(the paper's ablation) the warp is not run in training.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import fast_ops, identity_robustness, warp
from normalized_faces.landmarks import NUM_LANDMARKS

TEXTURE_DECODERS = ("cnn", "fc")
# How the CNN texture decoder doubles its resolution. "transpose" is the paper's 5 x 5 stride-2
# transposed convolution; its kernel is not divisible by its stride, so output pixels receive
# unevenly many contributions and the texture shows a period-2 checkerboard (Odena et al. 2016,
# "Deconvolution and Checkerboard Artifacts"): measured on the demo model, the energy at the
# period-2 frequencies was 15-18x that of the neighbouring band. "resize" (bilinear x2, then a
# 3 x 3 convolution) cannot make that pattern, at ~1.4x the transposed convolution's FLOPs.
TEXTURE_UPSAMPLINGS = ("transpose", "resize")
# How the identity loss renders the face it encodes: "chip" samples the encoder's chip straight from
# the texture (warp.sparse_image_warp_chip; faster, one interpolation); "frame" renders the whole
# aligned frame and lets the encoder re-frame it (two interpolations; the behaviour before).
IDENTITY_RENDERS = ("chip", "frame")


@keras.saving.register_keras_serializable(package="normalized_faces")
class EncoderHead(keras.layers.Layer):
    """The trained layer on top of the frozen encoder: [B, F_enc] -> fully connected + ReLU -> [B, feature_dim].

    Args:
      feature_dim: output width (the paper does not state it; 1024 here).
      **kwargs: Keras layer arguments (name, dtype policy, ...); the policy reaches the sublayer.
    """

    def __init__(self, feature_dim=1024, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.dense = keras.layers.Dense(self.feature_dim, activation="relu", name="dense", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, features):
        return self.dense(features)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.feature_dim,)

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim}


@keras.saving.register_keras_serializable(package="normalized_faces")
class LandmarkDecoder(keras.layers.Layer):
    """Shallow MLP: [B, D] -> [B, 68, 2] landmarks = mean landmarks + predicted offsets (pixels).

    The output layer starts at zero, so an untrained decoder predicts the mean face. The output is
    float32 whatever the dtype policy (landmarks feed the warp's spline solve).

    Args:
      mean_landmarks: [68, 2] (x, y) pixels in the aligned frame (data prep's metadata.json).
      hidden_sizes: widths of the ReLU hidden layers (the paper: "a shallow MLP").
      **kwargs: Keras layer arguments; the dtype policy reaches the sublayers.
    """

    def __init__(self, mean_landmarks, hidden_sizes=(512,), **kwargs):
        super().__init__(**kwargs)
        self.mean_landmarks = np.asarray(mean_landmarks, np.float32).reshape(NUM_LANDMARKS, 2)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        # One attribute per layer (not a list): tf.train.Checkpoint only follows attributes, and
        # layers kept in a Python list on a Keras 3 layer would be missing from checkpoints.
        for i, h in enumerate(self.hidden_sizes):
            setattr(
                self,
                f"hidden_{i}",
                keras.layers.Dense(h, activation="relu", name=f"hidden_{i}", dtype=self.dtype_policy),
            )
        self.offsets = keras.layers.Dense(
            NUM_LANDMARKS * 2, kernel_initializer="zeros", name="offsets", dtype=self.dtype_policy
        )

    @property
    def hidden(self):
        return [getattr(self, f"hidden_{i}") for i in range(len(self.hidden_sizes))]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.offsets.build(shape)

    def call(self, h):
        for layer in self.hidden:
            h = layer(h)
        offsets = tf.reshape(tf.cast(self.offsets(h), tf.float32), [-1, NUM_LANDMARKS, 2])
        return tf.constant(self.mean_landmarks)[None] + offsets

    def compute_output_shape(self, input_shape):
        return (input_shape[0], NUM_LANDMARKS, 2)

    def get_config(self):
        return {
            **super().get_config(),
            "mean_landmarks": self.mean_landmarks.tolist(),
            "hidden_sizes": list(self.hidden_sizes),
        }


@keras.saving.register_keras_serializable(package="normalized_faces")
class WideDense(keras.layers.Dense):
    """keras.layers.Dense (same weights and results) whose input gradient is computed in the
    kernel's stored order (fast_ops.matmul): for outputs far wider than the batch."""

    def call(self, inputs, training=None):
        kernel = tf.cast(self.kernel, self.compute_dtype)
        outputs = fast_ops.matmul(tf.cast(inputs, self.compute_dtype), kernel)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, self.compute_dtype))
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="normalized_faces")
class ResizeConv(keras.layers.Layer):
    """[B, H, W, C] -> [B, 2H, 2W, channels]: bilinear x2 upsampling, then a 3 x 3 convolution.

    Args:
      channels: output channels of the convolution.
      **kwargs: Keras layer arguments; the dtype policy reaches the convolution.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.conv = keras.layers.Conv2D(self.channels, 3, padding="same", name="conv", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build((input_shape[0], None, None, input_shape[-1]))

    def call(self, x):
        # Not self.conv(upsampled): fast_ops computes the same numbers without the upsampled
        # tensor (the conv layer holds the weights, so checkpoints are unchanged).
        kernel = tf.cast(self.conv.kernel, x.dtype)
        return fast_ops.resize_conv(x, kernel, tf.cast(self.conv.bias, x.dtype))

    def compute_output_shape(self, input_shape):
        double = lambda n: None if n is None else 2 * n  # noqa: E731
        return (input_shape[0], double(input_shape[1]), double(input_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="normalized_faces")
class TextureDecoder(keras.layers.Layer):
    """[B, D] -> texture [B, S, S, 3].

    kind="cnn" (the paper): fully connected to 14 x 14 x base, four 5 x 5 stride-2 transposed convs
    separated by ReLU up to 224 x 224, channels max(base / 2^i, min_channels) (paper: base 256,
    min 32), then a 1 x 1 conv to RGB. kind="fc" (the paper's ablation): one fully connected layer
    to fc_size x fc_size x 3, bilinearly resized to S if smaller.
    upsampling="resize" replaces each transposed conv by ResizeConv (see TEXTURE_UPSAMPLINGS).
    The output is linear, as in the paper (targets are in [0, 1]).

    Args:
      kind: "cnn" or "fc" (TEXTURE_DECODERS).
      size: output side S in pixels; a multiple of 16 for "cnn".
      base_channels: channels at the first (S/16 x S/16) stage of "cnn".
      min_channels: floor of the halving channel counts of "cnn".
      fc_size: "fc" only: side of the fully connected output before resizing (None: S).
      upsampling: "transpose" (the paper's) or "resize", for "cnn".
      **kwargs: Keras layer arguments; the dtype policy reaches every sublayer.
    """

    def __init__(
        self, kind="cnn", size=224, base_channels=256, min_channels=32, fc_size=None, upsampling="transpose", **kwargs
    ):
        super().__init__(**kwargs)
        if kind not in TEXTURE_DECODERS:
            raise ValueError(f"texture decoder kind must be one of {TEXTURE_DECODERS}, got {kind!r}")
        if upsampling not in TEXTURE_UPSAMPLINGS:
            raise ValueError(f"texture upsampling must be one of {TEXTURE_UPSAMPLINGS}, got {upsampling!r}")
        self.kind = kind
        self.upsampling = upsampling
        self.size = int(size)
        self.base_channels = int(base_channels)
        self.min_channels = int(min_channels)
        self.fc_size = int(fc_size or size)
        if kind == "cnn":
            if self.size % 16:
                raise ValueError(
                    f"the CNN texture decoder upsamples 16x from 14 x 14: size must be a multiple of 16, got {size}"
                )
            self.start = self.size // 16
            policy = self.dtype_policy
            self.project = WideDense(self.start * self.start * self.base_channels, name="project", dtype=policy)
            for i in range(1, 5):  # one attribute per layer, as in LandmarkDecoder
                channels = max(self.base_channels // 2**i, self.min_channels)
                if upsampling == "transpose":
                    layer = keras.layers.Conv2DTranspose(
                        channels, 5, strides=2, padding="same", name=f"deconv_{i}", dtype=policy
                    )
                else:
                    layer = ResizeConv(channels, name=f"upconv_{i}", dtype=policy)
                setattr(self, f"deconv_{i}", layer)
            self.to_rgb = keras.layers.Conv2D(3, 1, name="to_rgb", dtype=policy)
        else:
            self.project = WideDense(self.fc_size * self.fc_size * 3, name="project", dtype=self.dtype_policy)

    @property
    def upsample(self):
        return [getattr(self, f"deconv_{i}") for i in range(1, 5)]

    def build(self, input_shape):
        self.project.build(tuple(input_shape))
        if self.kind == "cnn":
            shape = (input_shape[0], self.start, self.start, self.base_channels)
            for layer in self.upsample:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            self.to_rgb.build(shape)

    def call(self, h):
        if self.kind == "fc":
            texture = tf.reshape(self.project(h), [-1, self.fc_size, self.fc_size, 3])
            if self.fc_size != self.size:
                texture = tf.image.resize(texture, [self.size, self.size], method="bilinear")
            return texture
        x = tf.reshape(self.project(h), [-1, self.start, self.start, self.base_channels])
        for i, layer in enumerate(self.upsample):
            x = layer(tf.nn.relu(x) if i else x)  # "separated by ReLU"
        return self.to_rgb(tf.nn.relu(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, 3)

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "size": self.size,
            "base_channels": self.base_channels,
            "min_channels": self.min_channels,
            "fc_size": self.fc_size,
            "upsampling": self.upsampling,
        }


def _across_workers(strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy that really spans several workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(tasks) for tasks in spec.values()) > 1


# NormalizedFaceModel overrides a private Keras method (see _maybe_symbolic_build below). Keras is
# pinned to 3.x in setup.py; should a 3.x release rename or reshape that method, fail here, at
# import, with what to do, rather than silently losing the multi-worker fix.
_SYMBOLIC_BUILD = getattr(keras.Model, "_maybe_symbolic_build", None)
if _SYMBOLIC_BUILD is None or list(inspect.signature(_SYMBOLIC_BUILD).parameters) != ["self", "iterator", "data_batch"]:
    raise ImportError(
        f"Keras {keras.__version__} changed Model._maybe_symbolic_build, which NormalizedFaceModel overrides for "
        "MultiWorkerMirroredStrategy (tested with Keras 3.15): install keras==3.15.* or update normalized_faces/model.py"
    )


def deserialize_parts(config: dict, *keys) -> dict:
    """A model's config with its serialized frozen parts (`keys`: "encoder", "regressor") rebuilt
    and the "method" tag dropped: the keyword arguments of the model's constructor."""
    from normalized_faces.encoders import dlib_resnet, facenet  # noqa: F401 (registers their classes)

    config = {key: value for key, value in config.items() if key != "method"}
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


class RebuildsForInference:
    """for_inference: from_config in float32, whatever policy the model trained in (a run's
    model_config.json records it): its checkpointed variables are float32 either way, and outputs
    should not depend on the precision training happened to use."""

    @classmethod
    def for_inference(cls, config):
        return cls.from_config({**config, "dtype": "float32"})


@keras.saving.register_keras_serializable(package="normalized_faces")
class NormalizedFaceModel(RebuildsForInference, keras.Model):
    """The whole model, with the paper's losses in its own train_step / test_step.

    Call: images [B, S, S, 3] in [0, 1] -> {"landmarks", "texture", "rendered", "features",
    "embedding", "descriptor"}. The encoder is passed in (built by normalized_faces.encoders.get_encoder) and
    stays frozen; everything else trains.

    Args:
      encoder: a frozen encoder layer (encoders.base), its weights already loaded.
      mean_landmarks: [68, 2] mean landmarks of the training data (the texture's frame).
      feature_dim, landmark_hidden: EncoderHead's width and LandmarkDecoder's hidden sizes.
      texture_decoder, texture_base_channels, texture_min_channels, texture_fc_size,
        texture_upsampling: TextureDecoder's kind, base_channels, min_channels, fc_size, upsampling.
      image_size: side of the aligned input and of the texture (paper: 224).
      landmark_weight, texture_weight, identity_weight: the loss weights (identity 0: the ablation,
        no warp in training).
      flow_stride: the renderer's (1: exact warp).
      identity_render, identity_flow_stride: how the identity loss renders its face (IDENTITY_RENDERS).
      identity_jitter: strength of the random similarity + noise each rendered face gets before the
        identity loss encodes it (identity_robustness.jitter_chips; 0: off, the paper's).
      shared_residual_weight: weight of identity_robustness.shared_residual_loss on the texture (0: off).
      **kwargs: Keras model arguments (name, dtype policy); the policy reaches every trained layer.
    """

    def __init__(
        self,
        encoder,
        mean_landmarks,
        feature_dim=1024,
        landmark_hidden=(512,),
        texture_decoder="cnn",
        texture_base_channels=256,
        texture_min_channels=32,
        texture_fc_size=None,
        texture_upsampling="transpose",
        image_size=224,
        landmark_weight=100.0,
        texture_weight=1.0,
        identity_weight=0.1,
        flow_stride=1,
        identity_render="chip",
        identity_flow_stride=2,
        identity_jitter=0.0,
        shared_residual_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if identity_render not in IDENTITY_RENDERS:
            raise ValueError(f"identity_render must be one of {IDENTITY_RENDERS}, got {identity_render!r}")
        self.identity_render = identity_render
        # The chip the identity loss encodes may use a coarser flow than the rendered output: it is
        # a training signal (stride 2: ~1e-3 px mean flow difference), while call() renders exactly.
        self.identity_flow_stride = int(identity_flow_stride)
        self.encoder = encoder
        self.encoder.trainable = False
        self.image_size = int(image_size)
        self.mean_landmarks = np.asarray(mean_landmarks, np.float32).reshape(NUM_LANDMARKS, 2)
        policy = self.dtype_policy
        self.head = EncoderHead(feature_dim, name="head", dtype=policy)
        self.landmark_decoder = LandmarkDecoder(
            self.mean_landmarks, landmark_hidden, name="landmark_decoder", dtype=policy
        )
        self.texture_decoder = TextureDecoder(
            texture_decoder,
            self.image_size,
            texture_base_channels,
            texture_min_channels,
            texture_fc_size,
            texture_upsampling,
            name="texture_decoder",
            dtype=policy,
        )
        # The warp samples in float32 whatever the policy (SparseImageWarp), so it keeps its own.
        self.renderer = warp.SparseImageWarp(order=1, num_boundary_points=4, flow_stride=flow_stride, name="renderer")
        self.landmark_weight = float(landmark_weight)
        self.texture_weight = float(texture_weight)
        self.identity_weight = float(identity_weight)
        self.identity_jitter = float(identity_jitter)
        self.shared_residual_weight = float(shared_residual_weight)
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in (
                "loss",
                "landmark_loss",
                "texture_loss",
                "identity_loss",
                "identity_similarity",
                "shared_residual_loss",
            )
        }
        # Batches whose loss was NaN/Inf: kept out of the means above, counted here (train.py's policy).
        self.trackers["nonfinite_batches"] = keras.metrics.Sum(name="nonfinite_batches")

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build_for_training(self):
        """Creates every variable (and the optimizer's slots) before a restore or a distributed
        fit: call after compile(), inside the strategy's scope."""
        self(tf.zeros([1, self.image_size, self.image_size, 3]))
        self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) calls this from fit() under a strategy and first reduces a data batch with
        # strategy.reduce, which MultiWorkerMirroredStrategy cannot do for a dict of tensors. Its
        # only job is to build unbuilt layers and optimizer; train.build_model has built them all,
        # so skip it then (tests/test_training.py's multi-worker test covers this override).
        if all(layer.built for layer in self._flatten_layers()) and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def uses_identity_loss(self) -> bool:
        return self.identity_weight > 0

    def decode(self, features):
        h = self.head(features)
        return self.landmark_decoder(h), tf.cast(self.texture_decoder(h), tf.float32)

    def _mean_landmarks_like(self, texture):
        """The mean landmarks, one copy per texture in the batch: [B, 68, 2]."""
        return tf.tile(tf.constant(self.mean_landmarks)[None], [tf.shape(texture)[0], 1, 1])

    def render(self, texture, landmarks):
        """Texture (registered to the mean landmarks) warped to `landmarks`: [B, S, S, 3] float32."""
        return self.renderer(texture, self._mean_landmarks_like(texture), landmarks)

    def call(self, images, training=False):
        encoded = self.encoder(images)
        landmarks, texture = self.decode(encoded["features"])
        return {
            "landmarks": landmarks,
            "texture": texture,
            "rendered": self.render(texture, landmarks),
            "features": tf.cast(encoded["features"], tf.float32),
            "embedding": tf.cast(encoded["embedding"], tf.float32),
            # The vector the encoder's published verification threshold is defined on (dlib: its
            # raw descriptor; FaceNet: the embedding).
            "descriptor": tf.cast(encoded[self.encoder.threshold.output], tf.float32),
        }

    def compute_losses(self, batch, training):
        """Per-replica mean losses for a batch dict from data.make_dataset: image, texture, landmarks,
        and optionally the image's cached encoder outputs (features, embedding)."""
        if "features" in batch:
            # The input photos' encoder outputs, read from the encoder cache (encoder_cache.py): the
            # frozen encoder gives the same values at every step, so they are computed once.
            encoded = {"features": batch["features"], "embedding": batch["embedding"]}
        else:
            encoded = self.encoder(batch["image"])
        landmarks, texture = self.decode(encoded["features"])
        size = float(self.image_size)
        landmark_loss = tf.reduce_mean(tf.square((landmarks - batch["landmarks"]) / size))
        texture_loss = tf.reduce_mean(tf.abs(texture - batch["texture"]))
        total = self.landmark_weight * landmark_loss + self.texture_weight * texture_loss
        losses = {"landmark_loss": landmark_loss, "texture_loss": texture_loss}
        if self.shared_residual_weight > 0:
            shared = identity_robustness.shared_residual_loss(texture, batch["texture"])
            total += self.shared_residual_weight * shared
            losses["shared_residual_loss"] = shared
        jitter = self.identity_jitter if training else 0.0  # validation sees the faces as they are
        if self.uses_identity_loss:
            # The rendered face goes back through the frozen encoder; clipping keeps it in the
            # encoder's input range (the linear texture output can overshoot early in training).
            if self.identity_render == "chip" and not self.encoder.native_input:
                # Render only what the encoder looks at: its chip of the rendered face, sampled
                # straight from the texture (one resampling instead of warp + re-framing).
                chips = warp.sparse_image_warp_chip(
                    # Sampled in float32 whatever the policy, as the renderer does (and where the
                    # warp's fused CPU kernels apply).
                    tf.cast(texture, tf.float32),
                    self._mean_landmarks_like(texture),
                    landmarks,
                    self.encoder.aligned_chip_matrix(),
                    self.encoder.native_size,
                    num_boundary_points=self.renderer.num_boundary_points,
                    flow_stride=self.identity_flow_stride,
                )
                chips = identity_robustness.jitter_chips(tf.clip_by_value(chips, 0.0, 1.0), jitter)
                rendered_embedding = self.encoder.encode_chips(chips)["embedding"]
            else:
                rendered = tf.clip_by_value(self.render(texture, landmarks), 0.0, 1.0)
                rendered_embedding = self.encoder(identity_robustness.jitter_chips(rendered, jitter))["embedding"]
            # Losses are float32 whatever the dtype policy (mixed precision runs the encoder in half).
            similarity = tf.reduce_sum(
                tf.stop_gradient(tf.cast(encoded["embedding"], tf.float32)) * tf.cast(rendered_embedding, tf.float32),
                axis=-1,
            )
            identity_loss = tf.reduce_mean(1.0 - similarity)
            total += self.identity_weight * identity_loss
            losses.update(identity_loss=identity_loss, identity_similarity=tf.reduce_mean(similarity))
        losses["loss"] = total
        return losses

    def _update_trackers(self, losses):
        finite = tf.cast(tf.math.is_finite(losses["loss"]), tf.float32)
        for name, value in losses.items():
            self.trackers[name].update_state(tf.where(finite > 0, value, 0.0), sample_weight=finite)
        self.trackers["nonfinite_batches"].update_state(1.0 - finite)
        results = {
            name: tracker.result()
            for name, tracker in self.trackers.items()
            if name in losses or name == "nonfinite_batches"
        }
        if _across_workers(tf.distribute.get_strategy()):
            # Keras (3.15) reduces step outputs across workers with strategy.reduce(MEAN, axis=0),
            # which needs a leading axis: give the (already synchronized) scalars one.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, training=True)
            # Gradients are summed over replicas, so each replica contributes its mean / replicas.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(losses["loss"] / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        # A LossScaleOptimizer (train.py always uses one) skips the update when any gradient is
        # not finite, so a NaN batch never reaches the weights.
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(losses)

    def test_step(self, batch):
        return self._update_trackers(self.compute_losses(batch, training=False))

    def get_config(self):
        # The encoder is rebuilt from its own config; everything else is plain numbers.
        return {
            "method": "cole2017",
            "name": self.name,
            "dtype": self.dtype_policy.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "mean_landmarks": self.mean_landmarks.tolist(),
            "feature_dim": self.head.feature_dim,
            "landmark_hidden": list(self.landmark_decoder.hidden_sizes),
            "texture_decoder": self.texture_decoder.kind,
            "texture_base_channels": self.texture_decoder.base_channels,
            "texture_min_channels": self.texture_decoder.min_channels,
            "texture_fc_size": self.texture_decoder.fc_size,
            "texture_upsampling": self.texture_decoder.upsampling,
            "image_size": self.image_size,
            "landmark_weight": self.landmark_weight,
            "texture_weight": self.texture_weight,
            "identity_weight": self.identity_weight,
            "flow_stride": self.renderer.flow_stride,
            "identity_render": self.identity_render,
            "identity_flow_stride": self.identity_flow_stride,
            "identity_jitter": self.identity_jitter,
            "shared_residual_weight": self.shared_residual_weight,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_parts(config, "encoder"))
