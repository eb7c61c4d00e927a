"""Wang (2019)'s generator (noisy face + attention mask), patch discriminator, and the model that
trains them from single photos with losses.py.

  photo [B, S, S, 3] (aligned, data prep's frame) -> frozen encoder -> features (FaceNet: AvgPool)
  features -> FC width -> FC width -> 5 x 5 x 192 -> six stages of (two residual blocks, 2x
       upsampling conv), channels halving 96 .. 3, tanh -> noisy face F_N [B, 320, 320, 3]
  mask branch: the same stages from the 80 x 80 x 12 tensor up, then a 1-channel conv, sigmoid -> W
  output F_O = W * F_N + (1 - W) * white, in data prep's aligned framing at output_size

`output_size` sets the number of stages (320: six, the thesis; 160: five, a CPU recipe); channels
halve from 192 at 5 x 5 whatever the size, and the mask branches at 80 x 80.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from normalized_faces import landmark_regressor  # noqa: F401  registers LandmarkRegressor: from_config needs it
from normalized_faces import landmarks as lm
from normalized_faces.model import RebuildsForInference, deserialize_parts
from normalized_faces.wang2019 import losses

MASK_BRANCH_SIZE = 80


def _stage_channels(output_size: int) -> list:
    """[(side, channels)] after each stage, from 10 x 10 up to output_size; the last has 3 channels."""
    sides, side = [], 5
    while side < output_size:
        side *= 2
        sides.append(side)
    if side != output_size:
        raise ValueError(f"output_size must be 5 * 2^k (160, 320, ...), got {output_size}")
    channels = [max(192 // 2 ** (i + 1), 3) for i in range(len(sides))]
    channels[-1] = 3
    return list(zip(sides, channels))


@keras.saving.register_keras_serializable(package="normalized_faces")
class ResidualBlock(keras.layers.Layer):
    """x + conv3x3(relu(conv3x3(relu(x)))), channels unchanged.

    Args:
      channels: the input's (and output's) channels.
      **kwargs: Keras layer arguments; the dtype policy reaches both convolutions.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.first = keras.layers.Conv2D(self.channels, 3, padding="same", name="first", dtype=self.dtype_policy)
        self.second = keras.layers.Conv2D(self.channels, 3, padding="same", name="second", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.first.build(input_shape)
        self.second.build(input_shape)

    def call(self, x):
        return x + self.second(tf.nn.relu(self.first(tf.nn.relu(x))))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="normalized_faces")
class UpStage(keras.layers.Layer):
    """Two residual blocks, then a 2x upsampling (bilinear x2 + 3 x 3 conv) to `channels`.

    Args:
      in_channels: the input's channels.
      channels: the output's channels.
      **kwargs: Keras layer arguments; the dtype policy reaches every sublayer.
    """

    def __init__(self, in_channels, channels, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.channels = int(in_channels), int(channels)
        policy = self.dtype_policy
        self.block_1 = ResidualBlock(self.in_channels, name="block_1", dtype=policy)
        self.block_2 = ResidualBlock(self.in_channels, name="block_2", dtype=policy)
        self.up = keras.layers.Conv2D(self.channels, 3, padding="same", name="up", dtype=policy)

    def build(self, input_shape):
        self.block_1.build(input_shape)
        self.block_2.build(input_shape)
        self.up.build((input_shape[0], None, None, self.in_channels))

    def call(self, x):
        x = self.block_2(self.block_1(x))
        x = tf.image.resize(x, tf.shape(x)[1:3] * 2, method="bilinear")
        return self.up(tf.cast(x, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        double = lambda n: None if n is None else 2 * n
        return (input_shape[0], double(input_shape[1]), double(input_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "channels": self.channels}


@keras.saving.register_keras_serializable(package="normalized_faces")
class WangGenerator(keras.layers.Layer):
    """features [B, F] -> {"noisy": F_N [B, S, S, 3] in [0, 1], "mask": W [B, S, S, 1], "face": F_O}.

    Args:
      output_size: S = 5 * 2^k (thesis: 320).
      fc_width: width of the two fully connected layers (thesis: 4800).
      **kwargs: Keras layer arguments; the dtype policy reaches every sublayer. Outputs are float32.
    """

    def __init__(self, output_size=320, fc_width=4800, **kwargs):
        super().__init__(**kwargs)
        self.output_size, self.fc_width = int(output_size), int(fc_width)
        self.stages = _stage_channels(self.output_size)
        policy = self.dtype_policy
        self.fc_1 = keras.layers.Dense(self.fc_width, activation="relu", name="fc_1", dtype=policy)
        self.fc_2 = keras.layers.Dense(self.fc_width, activation="relu", name="fc_2", dtype=policy)
        self.project = keras.layers.Dense(5 * 5 * 192, name="project", dtype=policy)
        previous = 192
        self.branch_index = next((i for i, (side, _) in enumerate(self.stages) if side == MASK_BRANCH_SIZE), None)
        if self.branch_index is None:
            raise ValueError(
                f"the mask branches at {MASK_BRANCH_SIZE} x {MASK_BRANCH_SIZE}: output_size must exceed it"
            )
        for i, (_, channels) in enumerate(self.stages):
            setattr(self, f"stage_{i}", UpStage(previous, channels, name=f"stage_{i}", dtype=policy))
            previous = channels
        previous = self.stages[self.branch_index][1]
        for i in range(self.branch_index + 1, len(self.stages)):
            channels = self.stages[i][1]
            setattr(self, f"mask_stage_{i}", UpStage(previous, channels, name=f"mask_stage_{i}", dtype=policy))
            previous = channels
        self.to_mask = keras.layers.Conv2D(1, 3, padding="same", name="to_mask", dtype=policy)

    def build(self, input_shape):
        self.fc_1.build(input_shape)
        self.fc_2.build((input_shape[0], self.fc_width))
        self.project.build((input_shape[0], self.fc_width))
        previous = 192
        for i, (side, channels) in enumerate(self.stages):
            getattr(self, f"stage_{i}").build((input_shape[0], side // 2, side // 2, previous))
            previous = channels
        previous = self.stages[self.branch_index][1]
        for i in range(self.branch_index + 1, len(self.stages)):
            side, channels = self.stages[i]
            getattr(self, f"mask_stage_{i}").build((input_shape[0], side // 2, side // 2, previous))
            previous = channels
        self.to_mask.build((input_shape[0], self.output_size, self.output_size, previous))

    def call(self, features):
        x = self.project(self.fc_2(self.fc_1(tf.cast(features, self.compute_dtype))))
        x = tf.reshape(x, [-1, 5, 5, 192])
        branch = None
        for i in range(len(self.stages)):
            x = getattr(self, f"stage_{i}")(x)
            if i == self.branch_index:
                branch = x
            if i < len(self.stages) - 1:
                x = tf.nn.relu(x)
        noisy = (tf.tanh(tf.cast(x, tf.float32)) + 1.0) / 2.0  # tanh's [-1, 1] as [0, 1] pixels
        m = branch
        for i in range(self.branch_index + 1, len(self.stages)):
            m = getattr(self, f"mask_stage_{i}")(tf.nn.relu(m))
        mask = tf.sigmoid(tf.cast(self.to_mask(tf.nn.relu(m)), tf.float32))
        return {"noisy": noisy, "mask": mask, "face": losses.compose(noisy, mask)}

    def compute_output_spec(self, features):
        batch, size = features.shape[0], self.output_size
        return {
            "noisy": keras.KerasTensor([batch, size, size, 3]),
            "mask": keras.KerasTensor([batch, size, size, 1]),
            "face": keras.KerasTensor([batch, size, size, 3]),
        }

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "fc_width": self.fc_width}


@keras.saving.register_keras_serializable(package="normalized_faces")
class PatchDiscriminator(keras.layers.Layer):
    """Thesis Table 3.2: 3 x 3 convs 32 (s1), 32 (s2), 64, 64 (s2), 128, 128 (s2), 256, 256 (s2), 1;
    leaky ReLU 0.2 between; [B, S, S, 3] in [0, 1] -> patch scores [B, S/16, S/16, 1] (320 -> 20).
    The table's eighth conv has stride 1, but its output halves 40 -> 20: stride 2 here.

    Args:
      **kwargs: Keras layer arguments; the dtype policy reaches every convolution.
    """

    SPEC = ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (1, 1))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for i, (channels, stride) in enumerate(self.SPEC):
            conv = keras.layers.Conv2D(
                channels, 3, strides=stride, padding="same", name=f"conv_{i}", dtype=self.dtype_policy
            )
            setattr(self, f"conv_{i}", conv)

    def _convs(self):
        return [getattr(self, f"conv_{i}") for i in range(len(self.SPEC))]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self._convs():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, images):
        x = tf.cast(images * 2.0 - 1.0, self.compute_dtype)
        convs = self._convs()
        for conv in convs[:-1]:
            x = tf.nn.leaky_relu(conv(x), alpha=0.2)
        return tf.cast(convs[-1](x), tf.float32)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv in self._convs():
            shape = conv.compute_output_shape(shape)
        return shape


def scale_points(points, from_size: int, to_size: int):
    """Landmarks of a square frame of side from_size, in the same framing at to_size (pixel-index
    coordinates: centres map to centres)."""
    scale = to_size / from_size
    return (points + 0.5) * scale - 0.5


@keras.saving.register_keras_serializable(package="normalized_faces")
class WangModel(RebuildsForInference, keras.Model):
    """The whole variant, trained with losses.py in its own train_step; 4 generator updates per
    discriminator update.

    Call: aligned photos [B, S, S, 3] in [0, 1] (data prep's frame, S = 224) -> {"face": F_O at
    output_size, "noisy", "mask", "rendered": F_O resized to S (what normalize-face and the export
    show beside the photo), "texture": F_N resized to S, "landmarks": the regressor's landmarks on
    F_O in the S frame, "features", "embedding", "descriptor"}.

    Args:
      encoder: the frozen encoder (as in NormalizedFaceModel).
      regressor: the frozen landmark regressor (landmark_regressor.load_pretrained()).
      output_size, fc_width: WangGenerator's.
      image_size: S, the aligned input's side.
      texture_weight, landmark_weight, mask_weight, identity_weight, gan_weight: the loss weights
        (0 switches a term off: the thesis's ablations); mask_power: p of mean(W^p);
      texture_mask_gradient: whether the texture term's weighting W gets its gradient (losses.py).
      discriminator_every: one discriminator update per this many generator updates (thesis: 4).
      discriminator_learning_rate: Adam's rate for the discriminator.
    """

    def __init__(
        self,
        encoder,
        regressor,
        output_size=320,
        fc_width=4800,
        image_size=lm.ALIGNED_SIZE,
        texture_weight=1.0,
        landmark_weight=1.0,
        mask_weight=1.0,
        identity_weight=1.0,
        gan_weight=1.0,
        mask_power=1.0,
        texture_mask_gradient=False,
        discriminator_every=4,
        discriminator_learning_rate=1e-4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder, self.regressor = encoder, regressor
        self.encoder.trainable = False
        self.regressor.trainable = False
        self.image_size, self.output_size = int(image_size), int(output_size)
        self.generator = WangGenerator(output_size, fc_width, name="generator", dtype=self.dtype_policy)
        self.discriminator = PatchDiscriminator(name="discriminator", dtype=self.dtype_policy)
        self.weights_by_term = {
            "texture": float(texture_weight),
            "landmark": float(landmark_weight),
            "mask": float(mask_weight),
            "identity": float(identity_weight),
            "gan": float(gan_weight),
        }
        self.mask_power = float(mask_power)
        self.texture_mask_gradient = bool(texture_mask_gradient)
        self.discriminator_every = int(discriminator_every)
        self.discriminator_learning_rate = float(discriminator_learning_rate)
        self.discriminator_optimizer = keras.optimizers.Adam(self.discriminator_learning_rate, beta_1=0.5)
        self.discriminator_updates = keras.Variable(0, dtype="int64", trainable=False, name="discriminator_updates")
        names = (
            "loss",
            "texture_loss",
            "landmark_loss",
            "mask_loss",
            "identity_loss",
            "gan_loss",
            "discriminator_loss",
        )
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.canonical = losses.canonical_reliable_points(
            self.output_size, lm.INTEROCULAR_DISTANCE * self.output_size / self.image_size
        )

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build_for_training(self):
        """Creates every variable (generator, discriminator, both optimizers' slots) before a
        restore or a distributed fit: call after compile(), inside the strategy's scope."""
        # The discriminator first: call() never runs it, and Keras warns about a model marked built
        # while a sublayer is not.
        self.discriminator(tf.zeros([1, self.output_size, self.output_size, 3]))
        self(tf.zeros([1, self.image_size, self.image_size, 3]))
        self.optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def _landmarks_at(self, images, size):
        """The regressor's landmarks on images of side `size`, in that frame."""
        points = self.regressor(images)  # the regressor resizes; its points are in its own frame
        return scale_points(points, self.regressor.image_size, size)

    def call(self, images, training=False):
        encoded = self.encoder(images)
        out = self.generator(encoded["features"])
        size = [self.image_size, self.image_size]
        return {
            **out,
            "rendered": tf.image.resize(out["face"], size, method="bilinear", antialias=True),
            # The unmasked face where the paper's model has its texture (the export's "texture").
            "texture": tf.image.resize(out["noisy"], size, method="bilinear", antialias=True),
            "landmarks": self._landmarks_at(out["face"], self.image_size),
            "features": tf.cast(encoded["features"], tf.float32),
            "embedding": tf.cast(encoded["embedding"], tf.float32),
            "descriptor": tf.cast(encoded[self.encoder.threshold.output], tf.float32),
        }

    def generator_losses(self, batch):
        """Per-replica mean losses of the generator for a batch of photo records (image, landmarks,
        optionally the cached encoder outputs)."""
        if "features" in batch:
            encoded = {"features": batch["features"], "embedding": batch["embedding"]}
        else:
            encoded = self.encoder(batch["image"])
        out = self.generator(encoded["features"])
        size = self.output_size
        photo = tf.image.resize(batch["image"], [size, size], method="bilinear", antialias=True)
        photo_points = scale_points(batch["landmarks"], self.image_size, size)
        face_points = self._landmarks_at(out["face"], size)
        w = self.weights_by_term
        terms = {
            "texture_loss": losses.masked_texture_loss(
                photo, out["face"], photo_points, face_points, out["mask"], self.canonical, self.texture_mask_gradient
            ),
            "landmark_loss": losses.landmark_loss(photo_points, face_points, size),
            "mask_loss": losses.mask_loss(out["mask"], self.mask_power),
        }
        total = (
            w["texture"] * terms["texture_loss"]
            + w["landmark"] * terms["landmark_loss"]
            + w["mask"] * terms["mask_loss"]
        )
        if w["identity"] > 0:
            face = tf.image.resize(out["face"], [self.image_size, self.image_size], method="bilinear")
            similarity = tf.reduce_sum(
                tf.stop_gradient(tf.cast(encoded["embedding"], tf.float32))
                * tf.cast(self.encoder(face)["embedding"], tf.float32),
                axis=-1,
            )
            terms["identity_loss"] = tf.reduce_mean(1.0 - similarity)
            total += w["identity"] * terms["identity_loss"]
        if w["gan"] > 0:
            terms["gan_loss"] = losses.lsgan_generator_loss(self.discriminator(out["noisy"]))
            total += w["gan"] * terms["gan_loss"]
        terms["loss"] = total
        return terms, out["noisy"], photo

    def train_step(self, batch):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms, noisy, photo = self.generator_losses(batch)
            scaled = self.optimizer.scale_loss(terms["loss"] / replicas)
        variables = self.generator.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        if self.weights_by_term["gan"] > 0:
            # One discriminator update per `discriminator_every` generator updates (thesis: 4), on the
            # noisy face F_N against the real photos.
            step = self.optimizer.iterations  # already advanced by the update above
            do_update = tf.equal(step % self.discriminator_every, 0)

            def update_discriminator():
                with tf.GradientTape() as d_tape:
                    d_loss = losses.lsgan_discriminator_loss(
                        self.discriminator(photo), self.discriminator(tf.stop_gradient(noisy))
                    )
                    d_scaled = d_loss / replicas  # inside the tape: the gradient's target must be recorded
                d_variables = self.discriminator.trainable_variables
                self.discriminator_optimizer.apply(d_tape.gradient(d_scaled, d_variables), d_variables)
                self.discriminator_updates.assign_add(1)
                return d_loss

            d_loss = tf.cond(do_update, update_discriminator, lambda: tf.constant(0.0, tf.float32))
            # The mean over the steps that updated the discriminator only.
            self.trackers["discriminator_loss"].update_state(d_loss, sample_weight=tf.cast(do_update, tf.float32))
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {
            name: tracker.result()
            for name, tracker in self.trackers.items()
            if name in terms or name == "discriminator_loss"
        }

    def test_step(self, batch):
        terms, _, _ = self.generator_losses(batch)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: self.trackers[name].result() for name in terms}

    def get_config(self):
        return {
            "method": "wang2019",
            "name": self.name,
            "dtype": self.dtype_policy.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "regressor": keras.saving.serialize_keras_object(self.regressor),
            "output_size": self.output_size,
            "fc_width": self.generator.fc_width,
            "image_size": self.image_size,
            **{f"{term}_weight": weight for term, weight in self.weights_by_term.items()},
            "mask_power": self.mask_power,
            "texture_mask_gradient": self.texture_mask_gradient,
            "discriminator_every": self.discriminator_every,
            "discriminator_learning_rate": self.discriminator_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_parts(config, "encoder", "regressor"))

    @property
    def mean_landmarks(self):
        """The regressor's mean landmarks (LFW's), in the aligned frame: export metadata."""
        return self.regressor.mean_landmarks
