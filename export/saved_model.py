"""Export a trained model as a SavedModel for TF Serving.

    python -m export.saved_model --model_dir=RUN --export_dir=EXPORTS [--version=N]

Writes EXPORTS/N/ (TF Serving's versioned layout; N defaults to the next free version) with:
  signatures
    serving_default   images: [B] string, JPEG or PNG bytes of aligned face crops (any size;
                      resized to 224 x 224 if needed)
    predict_images    images: [B, 224, 224, 3] float32 RGB in [0, 1]
  both returning
    normalized_face   [B, 224, 224, 3] uint8   the synthesized frontal, neutral face
    landmarks         [B, 68, 2] float32       (x, y) pixels
    texture           [B, 224, 224, 3] float32 in [0, 1], registered to the mean landmarks
    embedding         [B, E] float32           the encoder's unit-length identity embedding of the input
    descriptor        [B, D] float32           the vector the encoder's verification threshold
                                               applies to (dlib: raw descriptor; FaceNet: embedding)
  assets.extra/tf_serving_warmup_requests  TF Serving warm-up: one PredictRequest per signature
  assets.extra/normalized_faces.json       encoder, threshold, mean landmarks, source checkpoint
  assets.extra/mean_face.png               the training data's mean face (evaluation's baseline)

A flow VAE run (train_main.py --method=fvae) gets editing signatures instead (export/flow_vae.py).

The export is atomic: it is written to a hidden folder beside the target and renamed into place,
so a failed export leaves no half-written version for TF Serving to pick up.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from normalized_faces import inference, warp  # noqa: E402
from normalized_faces.config import MEAN_FACE_FILE  # noqa: E402

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"


class ServingModule(tf.Module):
    """The model plus the two serving functions (one per input type)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.image_size = model.image_size

    def _decode(self, encoded):
        size = self.image_size
        header = tf.strings.substr(encoded, 0, 4)
        supported = tf.logical_or(tf.strings.substr(header, 0, 3) == JPEG_MAGIC, header == PNG_MAGIC)
        check = tf.debugging.Assert(
            supported,
            ["each request image must be JPEG or PNG bytes of an aligned face crop; got bytes starting", header],
        )
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, [size, size], method="bilinear")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        decoded = tf.map_fn(
            self._decode, images, fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32)
        )
        return inference.model_outputs(self.model, decoded)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve_images(self, images):
        images = tf.ensure_shape(images, [None, self.image_size, self.image_size, 3])
        return inference.model_outputs(self.model, images)


def _warmup_image(size: int) -> bytes:
    """A synthetic aligned face as PNG bytes: warm-up requests must not carry anyone's photo."""
    import cv2

    from data_prep import synthetic
    from normalized_faces import alignment

    rng = np.random.default_rng(0)
    photo, points = synthetic.synthetic_photo(synthetic.random_identity(rng, "warmup"), rng, size=256)
    aligned = alignment.align_face(photo, points, size=size)
    return cv2.imencode(".png", cv2.cvtColor(aligned.image, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_warmup_requests(path: pathlib.Path, model_name: str, size: int) -> None:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    png = _warmup_image(size)
    image = tf.image.convert_image_dtype(tf.io.decode_png(png, channels=3), tf.float32)[None]
    requests = [
        ("serving_default", tf.make_tensor_proto([png], dtype=tf.string)),
        ("predict_images", tf.make_tensor_proto(image.numpy())),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, tensor in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs["images"].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def next_version(export_dir: pathlib.Path) -> int:
    existing = [int(p.name) for p in export_dir.iterdir() if p.name.isdigit()] if export_dir.exists() else []
    return max(existing, default=0) + 1


def export(
    model_dir, export_dir, version: int | None = None, model_name: str = "normalized_faces", overwrite: bool = False
) -> pathlib.Path:
    """Exports the latest checkpoint of a training run, or (model_dir None) the shipped model. Returns export_dir/version."""
    from normalized_faces import pretrained

    export_dir = pathlib.Path(export_dir)
    model = inference.restore_keras_model(model_dir)
    source_dir = pretrained.PRETRAINED_DIR if model_dir is None else pathlib.Path(model_dir)
    version = version or next_version(export_dir)
    target = export_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} exists: TF Serving versions are immutable; pass another --version (or --overwrite)"
        )
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = export_dir / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if getattr(model, "output_kind", None) is not None:  # a flow VAE run: editing signatures
            from export.flow_vae import export_flow_vae

            if model.output_kind != "flow":
                raise ValueError(f"{model_dir} is the VAE baseline (fvae_output=rgb): only the flow model edits photos")
            export_flow_vae(model, source_dir, staging)
        else:
            _export_normalizer(model, model_dir, source_dir, staging, model_name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic on one filesystem: TF Serving sees all of it or nothing
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_normalizer(model, model_dir, source_dir: pathlib.Path, staging: pathlib.Path, model_name: str) -> None:
    """The normalizing model's SavedModel, warm-up requests, metadata and mean face into `staging`."""
    from normalized_faces import pretrained

    module = ServingModule(model)
    # Traced with TF ops only: the warp's fused kernels are this package's custom ops, which
    # TF Serving and a process without this package could not load.
    with warp.portable_ops():
        tf.saved_model.save(
            module,
            str(staging),
            signatures={"serving_default": module.serve_encoded, "predict_images": module.serve_images},
        )
    write_warmup_requests(staging / "assets.extra" / "tf_serving_warmup_requests", model_name, model.image_size)
    threshold = model.encoder.threshold
    metadata = {
        "model_dir": pretrained.SOURCE if model_dir is None else str(source_dir.resolve()),
        "checkpoint": None if model_dir is None else tf.train.latest_checkpoint(str(source_dir / "checkpoints")),
        "encoder": type(model.encoder).__name__,
        "encoder_name": model.encoder.encoder_name,
        "image_size": model.image_size,
        "mean_landmarks": model.mean_landmarks.tolist(),
        "threshold": {
            "value": threshold.value,
            "output": threshold.output,
            "distance": threshold.distance,
            "source": threshold.source,
        },
    }
    (staging / inference.EXPORT_METADATA).write_text(json.dumps(metadata, indent=2))
    mean_face = source_dir / MEAN_FACE_FILE
    if mean_face.exists():  # evaluation's baseline travels with the model
        shutil.copyfile(mean_face, staging / inference.EXPORT_MEAN_FACE)


FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined on use, so importing this module defines none)."""
    flags.DEFINE_string(
        "model_dir", None, "A training run (train_main.py's --model_dir); default: the model shipped with the package."
    )
    flags.DEFINE_string(
        "export_dir", None, "Base folder; the model goes to export_dir/<version>/ as TF Serving expects."
    )
    flags.DEFINE_integer("version", None, "Version number (default: one more than the highest there).")
    flags.DEFINE_string(
        "model_name", "normalized_faces", "Model name used in the warm-up requests (TF Serving's --model_name)."
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing version.")


def main(argv):
    del argv
    if not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required")
    target = export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.version, FLAGS.model_name, FLAGS.overwrite)
    print(f"exported {target}")
    print(f"inspect: saved_model_cli show --dir {target} --all")
    print(
        f"serve:   tensorflow_model_server --rest_api_port=8501 --model_name={FLAGS.model_name} "
        f"--model_base_path={pathlib.Path(FLAGS.export_dir).resolve()}"
    )


if __name__ == "__main__":
    define_flags()
    from normalized_faces.config_flags import run_command

    run_command(main)
