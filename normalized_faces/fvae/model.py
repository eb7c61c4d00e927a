"""The flow VAE (Yeh et al., Sec. 3, Fig. 3, Sec. 5.3-5.4): expression editing by a predicted flow
that moves the source photo's own pixels.

  T [B, 128, 128, 3] -> encoder f -> Z ~ N(mean, exp(log_variance)), mean and log-variance [B, 4, 4, 1024]
  S -> source encoder (the same stages) -> features at 128, 64, 32, 16, 8, 4
  (Z, S's features) -> decoder g: at each scale nearest-neighbour 2x upsampling, a conv, S's
      features concatenated, a conv; a 5 x 5 conv and tanh -> flow [B, 128, 128, 2] (x, y),
      normalized coordinates (1 = half the image side)
  output = S sampled at (pixel + flow) by the project's bilinear sampler (warp.dense_image_warp)

Convolutions 3 x 3 except the first and the last (5 x 5); ReLU; batch norm except in the last two
layers; weights from a truncated normal with std 0.01. Channels double as the size halves, from
`base_channels` at 128 (32: 1,024 at 4 x 4, the paper's latent). `output_kind="rgb"` makes the same
network predict the image directly: the paper's VAE baseline. The confidence mask M(S, Z) is a
second decoder with one sigmoid channel, trained afterwards (losses.mask_target).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from normalized_faces import warp
from normalized_faces.fvae import losses
from normalized_faces.model import RebuildsForInference

IMAGE_SIZE = 128
LATENT_SIZE = 4
OUTPUT_KINDS = ("flow", "rgb", "mask")


def _init():
    return keras.initializers.TruncatedNormal(stddev=0.01)


def _conv(channels, kernel=3, strides=1, name=None):
    return keras.layers.Conv2D(channels, kernel, strides, padding="same", kernel_initializer=_init(), name=name)


def _stage_channels(base_channels: int) -> list:
    """Channels at 128, 64, 32, 16, 8, 4."""
    return [base_channels * 2**i for i in range(6)]


@keras.saving.register_keras_serializable(package="normalized_faces")
class ImageEncoder(keras.layers.Layer):
    """The encoder's stages: a 5 x 5 conv at 128, then stride-2 3 x 3 convs down to 4 x 4, each with
    batch norm and ReLU. Returns the features of every stage, finest first."""

    def __init__(self, base_channels=32, **kwargs):
        super().__init__(**kwargs)
        self.base_channels = int(base_channels)
        channels = _stage_channels(self.base_channels)
        # One attribute per layer (not a list): tf.train.Checkpoint only follows attributes, and
        # layers kept in a Python list on a Keras 3 layer would be missing from checkpoints.
        self.num_stages = len(channels)
        for i, c in enumerate(channels):
            size = IMAGE_SIZE >> i
            setattr(
                self, f"conv_{size}", _conv(c, 5, name="conv_128") if i == 0 else _conv(c, 3, 2, name=f"conv_{size}")
            )
            setattr(self, f"norm_{size}", keras.layers.BatchNormalization(name=f"norm_{size}"))

    def stage(self, i):
        """(conv, batch norm) of stage i (0: 128 x 128)."""
        size = IMAGE_SIZE >> i
        return getattr(self, f"conv_{size}"), getattr(self, f"norm_{size}")

    def call(self, images, training=False):
        features, x = [], images
        for i in range(self.num_stages):
            conv, norm = self.stage(i)
            x = tf.nn.relu(norm(conv(x), training=training))
            features.append(x)
        return features

    def get_config(self):
        return {**super().get_config(), "base_channels": self.base_channels}


@keras.saving.register_keras_serializable(package="normalized_faces")
class FlowDecoder(keras.layers.Layer):
    """g(S, Z): from the latent (with S's 4 x 4 features) up to 128 x 128, S's features joined at
    every scale. output_kind: "flow" (2 channels, tanh), "rgb" (3, tanh), "mask" (1, sigmoid)."""

    def __init__(self, base_channels=32, output_kind="flow", **kwargs):
        super().__init__(**kwargs)
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        self.base_channels, self.output_kind = int(base_channels), output_kind
        channels = _stage_channels(self.base_channels)
        self.bottom = _conv(channels[-1], name="bottom")
        self.bottom_norm = keras.layers.BatchNormalization(name="bottom_norm")
        # One attribute per layer, as in ImageEncoder (checkpoints follow attributes, not lists).
        self.sizes = [LATENT_SIZE << (i + 1) for i in range(len(channels) - 1)]  # 8, 16, 32, 64, 128
        for size, c in zip(self.sizes, reversed(channels[:-1])):
            setattr(self, f"up_{size}", _conv(c, name=f"up_{size}"))
            setattr(self, f"merge_{size}", _conv(c, name=f"merge_{size}"))
            setattr(self, f"up_norm_{size}", keras.layers.BatchNormalization(name=f"up_norm_{size}"))
            setattr(self, f"merge_norm_{size}", keras.layers.BatchNormalization(name=f"merge_norm_{size}"))
        # The last two layers: no batch norm.
        self.penultimate = _conv(channels[0], name="penultimate")
        self.out = _conv({"flow": 2, "rgb": 3, "mask": 1}[output_kind], 5, name="out")

    def call(self, latent, source_features, training=False):
        x = tf.concat([latent, source_features[-1]], axis=-1)
        x = tf.nn.relu(self.bottom_norm(self.bottom(x), training=training))
        for size, skip in zip(self.sizes, reversed(source_features[:-1])):
            up, merge = getattr(self, f"up_{size}"), getattr(self, f"merge_{size}")
            up_norm, merge_norm = getattr(self, f"up_norm_{size}"), getattr(self, f"merge_norm_{size}")
            x = tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
            x = tf.nn.relu(up_norm(up(x), training=training))
            x = tf.nn.relu(merge_norm(merge(tf.concat([x, skip], axis=-1)), training=training))
        x = self.out(tf.nn.relu(self.penultimate(x)))
        return tf.sigmoid(x) if self.output_kind == "mask" else tf.tanh(x)

    def get_config(self):
        return {**super().get_config(), "base_channels": self.base_channels, "output_kind": self.output_kind}


def apply_flow(source, flow):
    """source [B, H, W, C] sampled at (pixel + flow * (side - 1) / 2): flow [B, H, W, 2] (x, y) in
    normalized coordinates. The project's sampler (warp.dense_image_warp samples at pixel - its flow)."""
    shape = tf.shape(source)
    return warp.dense_image_warp(source, -flow * losses.flow_pixel_scale(shape[1], shape[2], flow.dtype))


def upsample_flow(flow, height: int, width: int):
    """A normalized-coordinate flow at any resolution (Sec. 4.3): resized bilinearly; being
    normalized, its values need no rescaling."""
    return tf.image.resize(flow, [height, width], method="bilinear")


def sample_latent(mean, log_variance, seed=None):
    """The reparameterization: mean + exp(log_variance / 2) * N(0, 1)."""
    noise = tf.random.normal(tf.shape(mean), dtype=mean.dtype, seed=seed)
    return mean + tf.exp(0.5 * log_variance) * noise


def edit_latents(latent, direction, steps: int):
    """Algorithm 1: Z_i = Z(S) + i / K (Z_target - Z_source) for i = 1..K.

    Args:
      latent: [B, h, w, D] the photos' latents; direction: the step Z_target - Z_source, [h, w, D] for
        every photo or [B, h, w, D] one per photo (editing.expression_directions).

    Returns:
      [K, B, h, w, D]: the K steps, the last one the full edit.
    """
    direction = tf.broadcast_to(tf.convert_to_tensor(direction, latent.dtype), tf.shape(latent))
    fractions = tf.range(1, steps + 1, dtype=latent.dtype) / float(steps)
    return latent[None] + fractions[:, None, None, None, None] * direction[None]


@keras.saving.register_keras_serializable(package="normalized_faces")
class FlowVAE(RebuildsForInference, keras.Model):
    """f, g and the confidence mask M, trained on (source, target) pairs of one person's photos.

    Batches: {"source": S, "target": T} [B, 128, 128, 3] in [-1, 1]. train_step minimizes
    reconstruction + kl_weight * KL + coherence_weight * coherence [+ landmark_weight * landmarks,
    the batch then carrying "source_landmarks" and "target_landmarks"] (losses.py) over everything but
    M; from optimizer step `mask_from_step` on (the second phase; None: never) only M learns,
    towards losses.mask_target. M's inputs are cut from the graph, so the two never mix.
    """

    def __init__(
        self,
        base_channels=32,
        output_kind="flow",
        kl_weight=0.003,
        coherence_weight=0.001,
        coherence_alpha=10.0,
        reconstruction_highpass=0.0,
        landmark_weight=0.0,
        mask_beta=0.1,
        mask_from_step=None,
        **kwargs,
    ):
        kwargs.pop("method", None)
        super().__init__(**kwargs)
        if output_kind not in ("flow", "rgb"):
            raise ValueError(f"output_kind must be flow (the flow VAE) or rgb (the VAE baseline), got {output_kind!r}")
        self.base_channels, self.output_kind = int(base_channels), output_kind
        self.kl_weight, self.coherence_weight = float(kl_weight), float(coherence_weight)
        self.coherence_alpha, self.mask_beta = float(coherence_alpha), float(mask_beta)
        self.reconstruction_highpass = float(reconstruction_highpass)
        self.landmark_weight = float(landmark_weight)
        self.mask_from_step = None if mask_from_step is None else int(mask_from_step)
        channels = _stage_channels(self.base_channels)[-1]
        self.target_encoder = ImageEncoder(self.base_channels, name="target_encoder")
        self.to_mean = keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=_init(), name="to_mean")
        self.to_log_variance = keras.layers.Conv2D(
            channels, 3, padding="same", kernel_initializer=_init(), name="to_log_variance"
        )
        self.source_encoder = ImageEncoder(self.base_channels, name="source_encoder")
        self.decoder = FlowDecoder(self.base_channels, output_kind, name="decoder")
        self.mask_decoder = FlowDecoder(self.base_channels, "mask", name="mask_decoder")
        names = ("loss", "reconstruction_loss", "kl_loss", "coherence_loss", "landmark_loss", "mask_loss")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, target, training=False):
        """(mean, log_variance) of Z for target photos."""
        features = self.target_encoder(target, training=training)[-1]
        # float32 whatever the dtype policy: the KL term sums exp(log_variance) over the latent.
        return tf.cast(self.to_mean(features), tf.float32), tf.cast(self.to_log_variance(features), tf.float32)

    def decode(self, source, latent, training=False, with_mask=True):
        """{"output": g(S, Z), "flow" (flow model only), "mask": M(S, Z) (unless with_mask=False)} for
        source photos and latents."""
        features = self.source_encoder(source, training=training)
        # The networks compute in the dtype policy's type (bfloat16 under mixed_bfloat16); what they
        # predict is float32, so the flow samples and the losses sum in float32, as the main
        # model's renderer and losses do.
        latent = tf.cast(latent, self.compute_dtype)
        predicted = tf.cast(self.decoder(latent, features, training=training), tf.float32)
        out = {}
        if with_mask:
            mask = self.mask_decoder(tf.stop_gradient(latent), [tf.stop_gradient(f) for f in features])
            out["mask"] = tf.cast(mask, tf.float32)
        if self.output_kind == "flow":
            # Keras casts the model's inputs to the policy's type: under mixed_bfloat16 the photo
            # arrives rounded to bfloat16 (within 0.002 of its value in [-1, 1], under half a
            # uint8 level) and is sampled in float32.
            out.update(flow=predicted, output=apply_flow(tf.cast(source, tf.float32), predicted))
        else:
            out["output"] = predicted
        return out

    image_size = IMAGE_SIZE

    def call(self, inputs, training=False, with_mask=True):
        if not isinstance(inputs, dict):  # one batch of photos: each reconstructs itself
            inputs = {"source": inputs, "target": inputs}
        mean, log_variance = self.encode(inputs["target"], training=training)
        latent = sample_latent(mean, log_variance) if training else mean
        decoded = self.decode(inputs["source"], latent, training=training, with_mask=with_mask)
        return {**decoded, "mean": mean, "log_variance": log_variance}

    def losses_for(self, batch, training=False, with_mask=True):
        """The loss terms of a batch {"source", "target"[, "target_weight"][, "source_landmarks",
        "target_landmarks"]} (the weight: where T's reconstruction error counts, data.pair_dataset's
        region; the landmarks: needed with landmark_weight > 0). with_mask=False skips the mask
        decoder (the flow phase of training: its loss is then reported as 0)."""
        out = self(batch, training=training, with_mask=with_mask)
        target = batch["target"]
        terms = {
            "reconstruction_loss": losses.reconstruction_loss(
                target, out["output"], batch.get("target_weight"), self.reconstruction_highpass
            ),
            "kl_loss": losses.kl_divergence(out["mean"], out["log_variance"]),
        }
        terms["loss"] = terms["reconstruction_loss"] + self.kl_weight * terms["kl_loss"]
        if self.output_kind == "flow" and self.coherence_weight > 0:
            terms["coherence_loss"] = losses.coherence_loss(out["flow"], target, self.coherence_alpha)
            terms["loss"] += self.coherence_weight * terms["coherence_loss"]
        if self.output_kind == "flow" and self.landmark_weight > 0:
            terms["landmark_loss"] = losses.landmark_loss(
                out["flow"], batch["source_landmarks"], batch["target_landmarks"]
            )
            terms["loss"] += self.landmark_weight * terms["landmark_loss"]
        terms["mask_loss"] = tf.constant(0.0)
        if with_mask:
            confidence = losses.mask_target(target, tf.stop_gradient(out["output"]), self.mask_beta)
            terms["mask_loss"] = losses.mask_loss(out["mask"], confidence)
        return terms

    def build_for_training(self):
        """Creates every variable (the model's and the optimizer's slots) before a restore or a
        distributed fit: call after compile(), inside the strategy's scope."""
        zeros = tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3])
        self({"source": zeros, "target": zeros})
        self.optimizer.build(self.trainable_variables)

    def _variables_by_phase(self):
        mask_ids = {id(v) for v in self.mask_decoder.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in mask_ids], self.mask_decoder.trainable_variables

    def in_mask_phase(self):
        if self.mask_from_step is None:
            return tf.constant(False)
        return self.optimizer.iterations >= self.mask_from_step

    def train_step(self, batch):
        main_variables, mask_variables = self._variables_by_phase()

        # One set of weights moves per step (Adam's momentum would move the other set on zero
        # gradients), and each phase computes only what it needs: the flow phase runs no mask
        # decoder, the mask phase no gradients of the flow model.
        def phase(mask_phase: bool):
            def run():
                with tf.GradientTape() as tape:
                    terms = self.losses_for(batch, training=True, with_mask=mask_phase)
                loss, variables = (
                    (terms["mask_loss"], mask_variables) if mask_phase else (terms["loss"], main_variables)
                )
                self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return terms

            return run

        terms = tf.cond(self.in_mask_phase(), phase(True), phase(False))
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items() if name in terms}

    def test_step(self, batch):
        terms = self.losses_for(batch, training=False)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items() if name in terms}

    def get_config(self):
        return {
            "method": "fvae",
            "name": self.name,
            "dtype": self.dtype_policy.name,
            "base_channels": self.base_channels,
            "output_kind": self.output_kind,
            "kl_weight": self.kl_weight,
            "coherence_weight": self.coherence_weight,
            "coherence_alpha": self.coherence_alpha,
            "reconstruction_highpass": self.reconstruction_highpass,
            "landmark_weight": self.landmark_weight,
            "mask_beta": self.mask_beta,
            "mask_from_step": self.mask_from_step,
        }
