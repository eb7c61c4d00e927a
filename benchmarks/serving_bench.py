"""The exported SavedModel against its encoder alone: latency at batch 1, throughput at batch 32.

    python benchmarks/serving_bench.py [--export_dir=EXPORTS] [--runs=5]

Without --export_dir it trains the tiny config for a few steps and exports it first (the
architecture, not the training, sets the cost). Both are timed in this process through
tf.saved_model.load signatures (predict_images) and the encoder's own tf.function.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "An export (base or version folder); default: export a tiny model first.")
flags.DEFINE_integer("runs", 5, "Timed runs (median printed).")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes.")


def main(argv):
    del argv
    from normalized_faces import inference

    export_dir = FLAGS.export_dir
    if export_dir is None:
        from data_prep import synthetic
        from export import saved_model
        from normalized_faces import train

        scratch = tempfile.mkdtemp(prefix="serving_bench_")
        config = train.tiny_config(
            os.path.join(scratch, "run"), train_steps=2, checkpoint_interval=2, identity_weight=0.0
        )
        synthetic.make_tiny_data(config.trainer.data_dir)
        train.train(config)
        export_dir = str(saved_model.export(config.runtime.model_dir, os.path.join(scratch, "exports")))
    version = inference.latest_version(export_dir)
    loaded = tf.saved_model.load(str(version))
    serve = loaded.signatures["predict_images"]
    metadata = inference.LoadedModel(version).metadata
    from normalized_faces.encoders import get_encoder

    encoder_name = "facenet" if "Facenet" in metadata.get("encoder", "") else "dlib_resnet"
    encoder = get_encoder(encoder_name)
    encode = tf.function(lambda x: encoder(x)["embedding"])
    print(f"{version} ({metadata.get('encoder')}), TensorFlow {tf.__version__}, {os.cpu_count()} CPUs")
    print(
        f"{'batch':>5} {'model ms/img':>13} {'encoder ms/img':>15} {'model img/s':>12} {'encoder img/s':>14} {'model/encoder':>14}"
    )
    rng = np.random.default_rng(0)
    for batch in [int(b) for b in FLAGS.batch_sizes]:
        images = tf.constant(rng.uniform(size=[batch, 224, 224, 3]).astype(np.float32))
        model_s = median_seconds(lambda: serve(images=images)["normalized_face"].numpy(), FLAGS.runs)
        encoder_s = median_seconds(lambda: encode(images).numpy(), FLAGS.runs)
        print(
            f"{batch:>5} {1000 * model_s / batch:>13.1f} {1000 * encoder_s / batch:>15.1f} "
            f"{batch / model_s:>12.1f} {batch / encoder_s:>14.1f} {model_s / encoder_s:>13.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
