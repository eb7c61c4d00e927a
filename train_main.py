"""Train the normalized-faces model (Cole et al. 2017) on data prep's TFRecords.

    # A minute on a CPU: tiny model, synthetic data made on first use, the offline dlib encoder.
    python train_main.py --config=tiny --model_dir=/tmp/tiny_run

    # The paper's setup (FaceNet weights fetched once, see README), on all local GPUs.
    python train_main.py --data_dir=DATA --model_dir=RUN --encoder=facenet --strategy=mirrored

Re-running the same command after an interruption continues from the latest checkpoint; re-running
a finished run does nothing and says so. model_dir gets config.json, checkpoints/, logs/
(TensorBoard) and samples/ (input | texture | landmarks | rendered grids).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from normalized_faces import train  # noqa: E402

FLAGS = flags.FLAGS
_d = train.TrainConfig()
flags.DEFINE_enum("config", "default", ["default", "tiny"], "tiny: a small model on built-in synthetic data (data_dir optional), about a minute on a CPU.")
flags.DEFINE_string("data_dir", None, "Data prep output: train-*/validation-*.tfrecord and metadata.json.")
flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, samples and config.json go; the run resumes from here.")
flags.DEFINE_enum("encoder", _d.encoder, ["facenet", "dlib_resnet"], "Frozen face-recognition network (facenet: the paper's; dlib_resnet: works offline).")
flags.DEFINE_string("encoder_weights", None, "FaceNet weights (.h5 or Sandberg checkpoint); default: keras-facenet's cache.")
flags.DEFINE_integer("batch_size", _d.batch_size, "Global batch size (split over all replicas).")
flags.DEFINE_integer("train_steps", _d.train_steps, "Optimizer steps in the whole run.")
flags.DEFINE_float("learning_rate", _d.learning_rate, "Adam learning rate.")
flags.DEFINE_float("landmark_weight", _d.landmark_weight, "Weight of the landmark MSE (landmarks in units of the image size).")
flags.DEFINE_float("texture_weight", _d.texture_weight, "Weight of the texture MAE.")
flags.DEFINE_float("identity_weight", _d.identity_weight, "Weight of the identity loss 1 - cos(embeddings); 0 switches it and the warp off (paper's ablation).")
flags.DEFINE_integer("feature_dim", _d.feature_dim, "Width of the trained layer on top of the encoder (not stated in the paper).")
flags.DEFINE_list("landmark_hidden", [str(h) for h in _d.landmark_hidden], "Hidden layer sizes of the landmark MLP.")
flags.DEFINE_enum("texture_decoder", _d.texture_decoder, ["cnn", "fc"], "cnn: the paper's transposed-conv decoder; fc: its fully connected ablation.")
flags.DEFINE_integer("texture_base_channels", _d.texture_base_channels, "Channels at 14 x 14 in the CNN decoder (paper: 256).")
flags.DEFINE_integer("texture_min_channels", _d.texture_min_channels, "Smallest channel count in the CNN decoder (paper: 32).")
flags.DEFINE_enum(
    "texture_upsampling", _d.texture_upsampling, ["resize", "transpose"],
    "CNN decoder upsampling: resize (bilinear x2 + 3x3 conv; no checkerboard) or transpose (the paper's 5x5 stride-2 deconvs).",
)
flags.DEFINE_integer("texture_fc_size", None, "Resolution of the fc decoder's output before resizing (default: the image size).")
flags.DEFINE_integer("flow_stride", _d.flow_stride, "1: exact spline warp; s > 1: coarse flow (faster, see README).")
flags.DEFINE_enum("strategy", _d.strategy, list(train.STRATEGIES), "tf.distribute strategy; multi_worker_mirrored reads TF_CONFIG.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
flags.DEFINE_enum(
    "precision", _d.precision, list(train.PRECISIONS),
    "Keras dtype policy. auto: mixed_bfloat16 on a CPU-only machine whose CPU has bfloat16 instructions (AVX512_BF16/AMX; "
    "measured 1.1-1.25x faster per step, losses tracking float32), else float32.",
)
flags.DEFINE_bool("jit_compile", _d.jit_compile, "Compile the train step with XLA.")
flags.DEFINE_integer("seed", _d.seed, "Random seed (weights, data order).")
flags.DEFINE_integer("checkpoint_interval", _d.checkpoint_interval, "Steps between checkpoints (and progress lines, sample grids).")
flags.DEFINE_integer("summary_interval", _d.summary_interval, "Steps between TensorBoard scalar updates.")
flags.DEFINE_integer("validation_interval", _d.validation_interval, "Steps between validation runs on the validation split.")
flags.DEFINE_integer("validation_steps", _d.validation_steps, "Batches per validation run.")
flags.DEFINE_enum("nonfinite", _d.nonfinite, ["stop", "skip"], "On a NaN/Inf loss: stop with a message naming the step, or skip the batch. Weights are never updated by such a batch.")

flags.DEFINE_bool(
    "encoder_cache", _d.encoder_cache,
    "Compute the frozen encoder's outputs for the records' photos once (DATA/encoder_cache/, checked against the records) "
    "instead of at every step. Same values; see the README's training figures for the time saved. --noencoder_cache: always run it.",
)

flags.DEFINE_enum(
    "identity_render", _d.identity_render, ["chip", "frame"],
    "How the identity loss renders the face it encodes. chip: only the encoder's chip, sampled straight from the texture "
    "(one interpolation; faster, see the README's training figures). frame: the whole face, then re-framed (the earlier path).",
)

flags.DEFINE_enum(
    "optimizer", _d.optimizer, ["fused_adam", "adam"],
    "Adam, updated by TensorFlow's fused kernel (fused_adam, faster on the paper's 51M-weight layer) or Keras's ops (adam). Same updates.",
)

flags.DEFINE_integer(
    "identity_flow_stride", _d.identity_flow_stride,
    "Flow stride of the chip the identity loss renders (training only; normalized faces are always rendered with --flow_stride). "
    "2 is ~1.1x faster per step than 1 at a ~1e-3 px mean flow difference.",
)

_FLAG_TO_FIELD = (
    "data_dir", "model_dir", "encoder", "encoder_weights", "batch_size", "train_steps", "learning_rate", "landmark_weight",
    "texture_weight", "identity_weight", "feature_dim", "texture_decoder", "texture_base_channels", "texture_min_channels",
    "texture_fc_size", "texture_upsampling", "flow_stride", "strategy", "tpu", "precision", "jit_compile", "seed", "checkpoint_interval",
    "summary_interval", "validation_interval", "validation_steps", "nonfinite", "encoder_cache", "identity_render", "optimizer", "identity_flow_stride",
)


def config_from_flags() -> train.TrainConfig:
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    explicit = {name: FLAGS[name].value for name in _FLAG_TO_FIELD if FLAGS[name].present}
    if FLAGS["landmark_hidden"].present:
        explicit["landmark_hidden"] = tuple(int(h) for h in FLAGS.landmark_hidden)
    if FLAGS.config == "tiny":
        explicit.pop("model_dir")
        return train.tiny_config(FLAGS.model_dir, **explicit)
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required (or --config=tiny for built-in synthetic data)")
    values = {name: FLAGS[name].value for name in _FLAG_TO_FIELD}
    values["landmark_hidden"] = tuple(int(h) for h in FLAGS.landmark_hidden)
    return train.TrainConfig(**values)


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    config = config_from_flags()
    if FLAGS.config == "tiny":
        train.make_tiny_data(config.data_dir, config.seed)
    train.train(config)


if __name__ == "__main__":
    app.run(main)
