"""Where a training step's time goes, on this CPU.

    python benchmarks/train_bench.py [--batch_size=8] [--runs=5] [--config=tiny|paper] [--encoder=dlib_resnet]

Times (median of --runs, ms per batch, tf.function graph mode):
  encoder forward (input)          the frozen encoder on the photos
  decoders forward + backward      head, landmark MLP, texture CNN with their gradients
  warp forward + backward          rendering the texture at the predicted landmarks
  encoder forward + backward       the identity loss's pass of the rendered face, with its input gradient
  full train step                  all of it plus the optimizer update
and the ratio of the full step to the encoder-only forward. --config=paper uses the paper's
decoder (256 channels at 14 x 14, feature_dim 1024); tiny uses the tiny config's.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from normalized_faces import landmarks, train  # noqa: E402
from timing import median_seconds  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("runs", 5, "Timed runs (median printed).")
flags.DEFINE_enum("config", "tiny", ["tiny", "paper"], "Decoder sizes: the tiny config's or the paper's.")
flags.DEFINE_enum("encoder", "dlib_resnet", ["dlib_resnet", "facenet"], "Encoder (facenet needs its weights).")


def main(argv):
    del argv
    overrides = dict(encoder=FLAGS.encoder)
    if FLAGS.config == "paper":
        overrides.update(feature_dim=1024, landmark_hidden=(512,), texture_base_channels=256, texture_min_channels=32)
    config = train.tiny_config("/tmp/unused", **overrides)
    mean = landmarks.template_landmarks()
    model = train.build_model(config, mean, 224)
    rng = np.random.default_rng(0)
    batch = {
        "image": tf.constant(rng.uniform(size=[FLAGS.batch_size, 224, 224, 3]).astype(np.float32)),
        "texture": tf.constant(rng.uniform(size=[FLAGS.batch_size, 224, 224, 3]).astype(np.float32)),
        "landmarks": tf.constant(landmarks.random_face_landmarks(rng, FLAGS.batch_size).astype(np.float32)),
    }
    features = model.encoder(batch["image"])["features"]

    @tf.function
    def encoder_forward():
        return model.encoder(batch["image"])["embedding"]

    @tf.function
    def decoders():
        with tf.GradientTape() as tape:
            points, texture = model.decode(features)
            loss = tf.reduce_mean(tf.abs(texture - batch["texture"])) + tf.reduce_mean(tf.square(points - batch["landmarks"]))
        return tape.gradient(loss, model.trainable_variables)

    points = landmarks.random_face_landmarks(rng, FLAGS.batch_size).astype(np.float32)
    texture = tf.Variable(batch["texture"])
    predicted = tf.Variable(points)

    @tf.function
    def warp():
        with tf.GradientTape() as tape:
            rendered = model.render(texture, predicted)
            loss = tf.reduce_sum(rendered)
        return tape.gradient(loss, [texture, predicted])

    rendered = tf.Variable(batch["image"])

    @tf.function
    def encoder_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model.encoder(rendered)["embedding"])
        return tape.gradient(loss, rendered)

    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(dataset)
    model.make_train_function()
    step = model.train_function

    figures = {
        "encoder forward (input)": 1000 * median_seconds(lambda: encoder_forward().numpy(), FLAGS.runs),
        "decoders forward + backward": 1000 * median_seconds(lambda: [g.numpy() for g in decoders()], FLAGS.runs),
        "warp forward + backward": 1000 * median_seconds(lambda: [g.numpy() for g in warp()], FLAGS.runs),
        "encoder forward + backward": 1000 * median_seconds(lambda: encoder_backward().numpy(), FLAGS.runs),
        "full train step": 1000 * median_seconds(lambda: step(iterator), FLAGS.runs),
    }
    print(f"batch {FLAGS.batch_size}, {FLAGS.config} decoder, {FLAGS.encoder} encoder, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}")
    for name, ms in figures.items():
        print(f"  {name:<30} {ms:8.1f} ms")
    print(f"  full step / encoder forward: {figures['full train step'] / figures['encoder forward (input)']:.1f}x")


if __name__ == "__main__":
    app.run(main)
