"""Does bfloat16 mixed precision train like float32? The same run twice, losses side by side.

    python benchmarks/precision_check.py [--train_steps=300] [--output_dir=/tmp/precision_check]

Trains the tiny config (its synthetic data, dlib's encoder, the identity loss on) from the same
seed with --precision=float32 and --precision=mixed_bfloat16, and prints the training and
validation losses at every checkpoint interval, their relative difference, and each run's time.
The question it answers: is bfloat16's shorter mantissa (8 bits) harmless for this model's losses
over a few hundred steps, so the speed it buys (benchmarks/train_bench.py) is free?
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from data_prep import synthetic  # noqa: E402
from normalized_faces import train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_steps", 300, "Steps per run.")
flags.DEFINE_integer("interval", 50, "Steps between the compared losses.")
flags.DEFINE_string("output_dir", "/tmp/precision_check", "Scratch folder (data is kept, runs are redone).")


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.output_dir)
    data_dir = root / "data"
    synthetic.make_tiny_data(str(data_dir))
    histories, seconds = {}, {}
    for precision in ("float32", "mixed_bfloat16"):
        run = root / precision
        shutil.rmtree(run, ignore_errors=True)
        config = train.tiny_config(
            str(run),
            data_dir=str(data_dir),
            train_steps=FLAGS.train_steps,
            checkpoint_interval=FLAGS.interval,
            validation_interval=FLAGS.interval,
            precision=precision,
        )
        started = time.time()
        histories[precision] = train.train(config)["history"]
        seconds[precision] = time.time() - started
    a, b = histories["float32"], histories["mixed_bfloat16"]
    print(
        f"\n{'step':>6} "
        + " ".join(f"{k:>26}" for k in ("loss f32 / bf16", "val_loss f32 / bf16", "identity_loss f32 / bf16"))
    )
    worst = 0.0
    for i in range(len(a["loss"])):
        cells = []
        for key in ("loss", "val_loss", "identity_loss"):
            if key in a and i < len(a[key]):
                x, y = a[key][i], b[key][i]
                worst = max(worst, abs(x - y) / abs(x)) if key != "identity_loss" else worst
                cells.append(f"{x:11.4f} / {y:11.4f}")
            else:
                cells.append(f"{'':>26}")
        print(f"{(i + 1) * FLAGS.interval:>6} " + " ".join(f"{c:>26}" for c in cells))
    print(f"largest relative difference of loss / val_loss: {100 * worst:.1f}%")
    print(
        f"time: float32 {seconds['float32']:.0f} s, mixed_bfloat16 {seconds['mixed_bfloat16']:.0f} s (data prep excluded)"
    )


if __name__ == "__main__":
    app.run(main)
