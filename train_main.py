"""Train the normalized-faces model (Cole et al. 2017) on data prep's TFRecords.

    # A minute on a CPU: tiny model, synthetic data made on first use, the offline dlib encoder.
    python train_main.py --config=tiny --model_dir=/tmp/tiny_run

    # The paper's setup (FaceNet weights fetched once, see README), on all local GPUs.
    python train_main.py --data_dir=DATA --model_dir=RUN --encoder=facenet --strategy=mirrored

Re-running the same command after an interruption continues from the latest checkpoint; re-running
a finished run does nothing and says so. model_dir gets config.json, checkpoints/, logs/
(TensorBoard) and samples/ (input | texture | landmarks | rendered grids).

Speed on CPUs (README "Training", measured by benchmarks/train_bench.py): the encoder cache, the
identity loss's chip render at flow stride 2, fused Adam and TensorFlow's BFC allocator for CPU
tensors (normalized_faces/__init__.py) are the defaults because each measured faster; mixed_bfloat16
is the default only where the CPU has AMX bfloat16 tiles (1.33x faster with them, slower without);
normalized_faces/fast_ops computes the texture projection's gradient in the kernel's order on every
CPU, and the ResizeConvs by output phases and FaceNet's 1 x 1 convolutions as matmuls only on CPUs
without AVX-512 (faster on an AVX2 machine, slower on an AVX-512 one); --jit_compile (XLA) is off
because it measured slower here. The warp
runs on fused C++ kernels (compiled with g++ on first use, cached in ~/.cache/normalized_faces)
where it can: float32 on the CPU outside XLA; NORMALIZED_FACES_WARP_KERNELS=tf switches them off.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from normalized_faces.quiet_start import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything below imports it: without its start-up lines on stderr

from data_prep import synthetic  # noqa: E402
from normalized_faces import config_flags, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "tiny"],
    "tiny: a small model on built-in synthetic data (data_dir optional), about a minute on a CPU.",
)
# Every other flag is a TrainConfig field, with the field's default and help (normalized_faces/config.py).
for _name in config_flags.define_flags(train.TrainConfig()):
    flags.declare_key_flag(_name)  # listed by --help, not only --helpfull


def config_from_flags() -> train.TrainConfig:
    """The flags given on the command line over the chosen config's defaults."""
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    given = config_flags.overrides_from_flags(train.TrainConfig())
    if FLAGS.config == "tiny":
        given.pop("model_dir")
        return train.tiny_config(FLAGS.model_dir, **given)
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required (or --config=tiny for built-in synthetic data)")
    return train.TrainConfig().replace(**given)


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    config = config_from_flags()
    if FLAGS.config == "tiny":
        mode = "photos" if config.model.method in ("wang2019", "fvae") else "morphs"
        synthetic.make_tiny_data(config.trainer.data_dir, config.trainer.seed, mode=mode)
    train.train(config)


if __name__ == "__main__":
    config_flags.run_command(main)
