"""Loading a trained model for inference: a training run's model_dir, an exported SavedModel, or the shipped model.

    model = load_model(path)      # either kind of folder; load_model() is the shipped model
    outputs = model(aligned)      # aligned [B, 224, 224, 3] float32 in [0, 1]
    outputs["normalized_face"]    # [B, 224, 224, 3] uint8, plus landmarks, texture, embedding, descriptor

Both kinds return the same dict, so the CLI, evaluation and tests do not care which they got.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

from normalized_faces.config import MEAN_FACE_FILE, MODEL_CONFIG_FILE
from normalized_faces.model import NormalizedFaceModel

EXPORT_METADATA = "assets.extra/normalized_faces.json"
EXPORT_MEAN_FACE = "assets.extra/" + MEAN_FACE_FILE


def _read_png(path: pathlib.Path):
    """An RGB uint8 image, or None if the file is absent."""
    if not path.exists():
        return None
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not a readable PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def model_for_inference(model_config: dict):
    """The model a model_config.json describes, by its method (the paper's when unstated), in float32."""
    if model_config.get("method") == "fvae":
        from normalized_faces.fvae.model import FlowVAE

        return FlowVAE.for_inference(model_config)
    if model_config.get("method", "cole2017") == "wang2019":
        from normalized_faces.wang2019.model import WangModel

        return WangModel.for_inference(model_config)
    return NormalizedFaceModel.for_inference(model_config)


def restore_training_model(model_dir) -> NormalizedFaceModel:
    """The model of a training run (model_config.json) with its latest checkpoint's weights."""
    model_dir = pathlib.Path(model_dir)
    config_path = model_dir / MODEL_CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} is missing: {model_dir} is not a training run's model_dir (train_main.py writes it)"
        )
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir / 'checkpoints'}: train the model first")
    model = model_for_inference(json.loads(config_path.read_text()))
    size = model.image_size
    model(tf.zeros([1, size, size, 3]))
    restore_trained_variables(model, latest)
    return model


def restore_trained_variables(model, checkpoint_path: str) -> None:
    """Restores `model` from a training checkpoint and checks that every variable it does not load
    itself came from it; raises ValueError naming those that did not.

    The frozen encoder (model.encoder, trainable False) is exempt from the check: it loads its own
    weights file when built and never trains, and its checkpoint paths changed when FaceNet's 1 x 1
    convolutions were wrapped in PointwiseConv, so tf.train's assert_existing_objects_matched would
    refuse runs trained before that although everything they trained is there. Unrestored variables
    are found by filling them with a sentinel first (NaN) that a restore overwrites.
    """
    encoder = getattr(model, "encoder", None)
    frozen = {id(v) for v in encoder.variables} if encoder is not None and not encoder.trainable else set()
    # Weights and batch norm statistics; integer variables (random generators' states) are restored unchecked.
    checked = [v for v in model.variables if id(v) not in frozen and tf.as_dtype(v.dtype).is_floating]
    for variable in checked:
        variable.assign(tf.fill(variable.shape, tf.constant(float("nan"), variable.dtype)))
    tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial()
    missing = [v.path for v in checked if np.isnan(v.numpy()).any()]
    if missing:
        raise ValueError(
            f"{checkpoint_path} does not hold {len(missing)} of the model's {len(checked)} trained variables "
            f"(or holds NaN there), e.g. {missing[:5]}: a checkpoint of another model configuration?"
        )


def model_outputs(model: NormalizedFaceModel, images):
    """The serving outputs of a Keras model on [B, S, S, 3] float32 images in [0, 1]."""
    out = model(images)
    rendered = tf.clip_by_value(out["rendered"], 0.0, 1.0)
    return {
        "normalized_face": tf.cast(tf.round(rendered * 255.0), tf.uint8),
        "landmarks": out["landmarks"],
        "texture": tf.clip_by_value(out["texture"], 0.0, 1.0),
        "embedding": out["embedding"],
        "descriptor": out["descriptor"],
    }


def latest_version(export_dir) -> pathlib.Path:
    """export_dir/N with the highest N (TF Serving's choice), or export_dir itself if it is a SavedModel."""
    export_dir = pathlib.Path(export_dir)
    if (export_dir / "saved_model.pb").exists():
        return export_dir
    versions = (
        sorted((int(p.name), p) for p in export_dir.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())
        if export_dir.is_dir()
        else []
    )
    if not versions:
        raise FileNotFoundError(f"no SavedModel in {export_dir} (expected saved_model.pb or numbered version folders)")
    return versions[-1][1]


class LoadedModel:
    """A uniform callable over a training run, an exported SavedModel or the shipped model (path None).

    Attributes: kind ("checkpoint" | "saved_model" | "pretrained"), source, image_size, threshold (the training
    encoder's VerificationThreshold), encoder_name (get_encoder's name of the training encoder),
    mean_face ([S, S, 3] uint8 mean of the training textures, or None for runs made before it was
    kept), metadata (export metadata).
    """

    def __init__(self, path=None):
        self.metadata = {}
        if path is None:  # the model shipped inside the package
            from normalized_faces import pretrained

            self._use_keras_model("pretrained", pretrained.build_model(), pretrained.PRETRAINED_DIR, pretrained.SOURCE)
            return
        path = pathlib.Path(path)
        if (path / MODEL_CONFIG_FILE).exists():
            self._use_keras_model("checkpoint", restore_training_model(path), path, str(path))
        else:
            version = latest_version(path)
            self.kind = "saved_model"
            self._loaded = tf.saved_model.load(str(version))
            signature = self._loaded.signatures["predict_images"]
            metadata_path = version / EXPORT_METADATA
            self.metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
            self.image_size = int(self.metadata.get("image_size", 224))
            from normalized_faces.encoders.base import VerificationThreshold

            self.threshold = (
                VerificationThreshold(**self.metadata["threshold"]) if "threshold" in self.metadata else None
            )
            self.encoder_name = self.metadata.get("encoder_name") or {
                "FacenetEncoder": "facenet",
                "DlibResNetEncoder": "dlib_resnet",
            }.get(self.metadata.get("encoder", ""), None)
            self.mean_face = _read_png(version / EXPORT_MEAN_FACE)
            self._call = lambda images: signature(images=images)
            self.source = str(version)

    def _use_keras_model(self, kind, keras_model, folder: pathlib.Path, source: str):
        """A Keras model in this process (a run's or the shipped one); folder holds its mean face."""
        self.kind, self.keras_model, self.source = kind, keras_model, source
        self.image_size = keras_model.image_size
        self.threshold = keras_model.encoder.threshold
        self.encoder_name = keras_model.encoder.encoder_name
        self.mean_face = _read_png(folder / MEAN_FACE_FILE)
        self._call = lambda images: model_outputs(keras_model, images)

    def __call__(self, images) -> dict:
        images = tf.convert_to_tensor(np.asarray(images, np.float32))
        return {k: v.numpy() for k, v in self._call(images).items()}


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded: the message names it, the reason and what to do."""


def describe_load_failure(path, error: Exception) -> str:
    """One line for a model folder that failed to load: which folder, why, and what to do."""
    path = pathlib.Path(path)
    reason = getattr(error, "message", None) or str(error) or type(error).__name__
    reason = " ".join(reason.split())[:300]
    if isinstance(error, FileNotFoundError):
        advice = "give an exported SavedModel (a version folder or its base folder) or a training run's model_dir"
    elif (path / MODEL_CONFIG_FILE).exists():
        advice = "its checkpoint files are damaged or incomplete: train again, or restore the run from a copy"
    else:
        advice = "its files are damaged or incomplete: export it again (python -m export.saved_model)"
    return f"--model {path}: cannot load it: {reason} ({advice})"


def load_model(path=None) -> LoadedModel:
    """A training run, an exported SavedModel, or (None) the model shipped with the package.

    A SavedModel is code (its graph can read and write files): load only models you trust.

    Raises:
      ModelLoadError: the folder holds no model, or its files are damaged (named in the message).
    """
    if path is None:
        return LoadedModel(None)
    try:
        return LoadedModel(path)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, tf.errors.OpError) as error:
        # (A truncated variables file raises IndexError "Read less bytes than requested".)
        raise ModelLoadError(describe_load_failure(path, error)) from error


def restore_keras_model(model_dir=None) -> NormalizedFaceModel:
    """The Keras model of a training run, or (None) the shipped one."""
    if model_dir is None:
        from normalized_faces import pretrained

        return pretrained.build_model()
    return restore_training_model(model_dir)
