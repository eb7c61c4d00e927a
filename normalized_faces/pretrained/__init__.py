"""The shipped model: a trained decoder inside the package, so `normalize-face PHOTO` works after install.

    python -m normalized_faces.pretrained --run=RUN/with_identity [--output_dir=normalized_faces/pretrained]

packages a training run: the model's config (model_config.json: architecture, mean landmarks,
the encoder's config, never its weights, which come from their own package: README "Set-up"),
the decoder's weights in float16 (decoder_weights.npz: everything but the frozen encoder), the
training data's mean face (mean_face.png, evaluation's baseline) and provenance.json (the run,
its checkpoint and step, the data, the size). It refuses a package over MAX_MEGABYTES and prints
how far the float16 outputs are from the run's own on a few inputs.

`build_model()` rebuilds the Keras model from these files (float16 weights widened to float32);
inference.load_model(None), normalize-face without --model, evaluation and export use it.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_FILE = "model_config.json"  # as in a run (config.MODEL_CONFIG_FILE)
WEIGHTS_FILE = "decoder_weights.npz"
MEAN_FACE_FILE = "mean_face.png"  # the name a run uses (config.MEAN_FACE_FILE), so one reader serves both
PROVENANCE_FILE = "provenance.json"
MAX_MEGABYTES = 40.0
SOURCE = "normalized_faces/pretrained (the shipped model)"


def is_available(directory=PRETRAINED_DIR) -> bool:
    directory = pathlib.Path(directory)
    return (directory / CONFIG_FILE).exists() and (directory / WEIGHTS_FILE).exists()


def decoder_variables(model) -> dict:
    """{variable path: variable} of everything the model trains (head and decoders; not the encoder).
    Paths drop their first part, the model's own name, which Keras numbers per process."""
    return {variable.path.split("/", 1)[1]: variable for variable in model.trainable_variables}


def build_model(directory=PRETRAINED_DIR):
    """The shipped NormalizedFaceModel with its weights (float32), ready to call."""
    import tensorflow as tf

    from normalized_faces.model import NormalizedFaceModel

    directory = pathlib.Path(directory)
    if not is_available(directory):
        raise FileNotFoundError(
            f"no shipped model in {directory} (expected {CONFIG_FILE} and {WEIGHTS_FILE}): pass --model=<a training run or SavedModel>"
        )
    model = NormalizedFaceModel.for_inference(json.loads((directory / CONFIG_FILE).read_text()))
    model(tf.zeros([1, model.image_size, model.image_size, 3]))
    variables = decoder_variables(model)
    with np.load(directory / WEIGHTS_FILE) as stored:
        missing, unexpected = sorted(set(variables) - set(stored.files)), sorted(set(stored.files) - set(variables))
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not fit {CONFIG_FILE}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for path, variable in variables.items():
            value = stored[path]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{directory / WEIGHTS_FILE}: {path} has shape {value.shape}, the model wants {tuple(variable.shape)}"
                )
            variable.assign(value.astype(np.float32))
    return model


def package_run(model_dir, output_dir=PRETRAINED_DIR, max_megabytes=MAX_MEGABYTES, report=print) -> dict:
    """Writes the shipped model's files from a training run (see the module docstring). Returns provenance."""
    import shutil

    import tensorflow as tf

    from normalized_faces import config, inference

    model_dir, output_dir = pathlib.Path(model_dir), pathlib.Path(output_dir)
    model = inference.restore_training_model(model_dir)
    weights = {path: variable.numpy().astype(np.float16) for path, variable in decoder_variables(model).items()}
    overflow = [path for path, value in weights.items() if not np.all(np.isfinite(value))]
    if overflow:
        raise ValueError(f"weights outside float16's range: {overflow[:3]}")
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / (WEIGHTS_FILE + ".partial")
    with partial.open("wb") as file:
        np.savez_compressed(file, **weights)
    megabytes = partial.stat().st_size / 2**20
    if megabytes > max_megabytes:
        partial.unlink()
        raise ValueError(
            f"the packaged decoder takes {megabytes:.1f} MB, over the {max_megabytes:g} MB the package may ship"
        )
    partial.replace(output_dir / WEIGHTS_FILE)
    (output_dir / CONFIG_FILE).write_text((model_dir / config.MODEL_CONFIG_FILE).read_text())
    if (model_dir / config.MEAN_FACE_FILE).exists():
        shutil.copyfile(model_dir / config.MEAN_FACE_FILE, output_dir / MEAN_FACE_FILE)
    run_config = json.loads((model_dir / config.RUN_CONFIG_FILE).read_text())
    provenance = {
        "run": str(model_dir),
        "checkpoint": pathlib.Path(tf.train.latest_checkpoint(str(model_dir / "checkpoints"))).name,
        "step": _checkpoint_step(tf.train.latest_checkpoint(str(model_dir / "checkpoints"))),
        "train_config": run_config,
        "weights": {
            "dtype": "float16",
            "count": int(sum(v.size for v in weights.values())),
            "megabytes": round(megabytes, 2),
        },
    }
    # How far float16 storage moves the outputs: the run's model vs the packaged one, same inputs.
    shipped = build_model(output_dir)
    images = tf.random.stateless_uniform([4, model.image_size, model.image_size, 3], seed=[0, 0])
    ours, theirs = model(images), shipped(images)
    texture_gap = float(tf.reduce_max(tf.abs(ours["texture"] - theirs["texture"])) * 255)
    landmark_gap = float(tf.reduce_max(tf.abs(ours["landmarks"] - theirs["landmarks"])))
    report(
        f"packaged {model_dir} ({provenance['weights']['count']:,} weights, {megabytes:.1f} MB) into {output_dir}; "
        f"float16 vs the run: texture within {texture_gap:.2f} grey levels, landmarks within {landmark_gap:.3f} px"
    )
    provenance["float16_gap"] = {"texture_grey_levels": texture_gap, "landmarks_px": landmark_gap}
    (output_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    return provenance


def _checkpoint_step(checkpoint):
    """The optimizer's iteration count stored in a checkpoint (the training step), or None."""
    import tensorflow as tf

    # A LossScaleOptimizer keeps its own counter beside the inner optimizer's: the step is the largest.
    names = [name for name, shape in tf.train.list_variables(checkpoint) if "iterations" in name and not shape]
    return max(int(tf.train.load_variable(checkpoint, name)) for name in names) if names else None


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Package a training run as the shipped model.")
    parser.add_argument("--run", required=True, help="A training run's model_dir.")
    parser.add_argument(
        "--output_dir", default=str(PRETRAINED_DIR), help="Where the files go (default: inside the package)."
    )
    parser.add_argument("--max_megabytes", type=float, default=MAX_MEGABYTES)
    args = parser.parse_args(argv)
    package_run(args.run, args.output_dir, args.max_megabytes)


if __name__ == "__main__":
    main()
