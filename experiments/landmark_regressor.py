"""Train the landmark regressor (normalized_faces/landmark_regressor.py) on LFW, measure it, ship it.

    python -m experiments.landmark_regressor --run_dir=/tmp/lmreg [--epochs=12] [--package]

One resumable command (re-run it after an interruption; finished stages are skipped):
1. data: data prep in photos mode without filters over every LFW photo (one record per photo with
   a face: the aligned 224 crop and dlib's 68 landmarks, the labels);
2. training on the train people and the people with fewer than 3 photos, checkpointed each epoch,
   model selection on the validation people (experiments/lfw_split.py);
3. evaluation against dlib on the test people (never trained or tuned on): the mean point error
   over the interocular distance (NME), its percentiles, and a figure of dlib's points beside the
   regressor's (landmark_regressor_test.png);
4. with --package, the float16 weights + config + provenance into normalized_faces/pretrained/,
   evaluated again from the packaged files (what users get).
Augmentation: random roll (+-10 degrees), scale (+-8%), shift (+-6 px), left-right flip (points
re-indexed by landmarks.MIRROR), brightness and contrast; the crops stay aligned faces.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import lfw_split  # noqa: E402
from normalized_faces import data, visualize  # noqa: E402
from normalized_faces import landmark_regressor as lr  # noqa: E402
from normalized_faces import landmarks as lm  # noqa: E402

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("run_dir", None, "Where the data, checkpoints, report and figure go (resumable).")
flags.DEFINE_string("lfw", str(REPO.parent / "shared" / "faces" / "lfw"), "LFW: <Name>/<Name>_NNNN.jpg.")
flags.DEFINE_integer("epochs", 12, "Passes over the training photos.")
flags.DEFINE_integer("batch_size", 32, "Photos per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's initial learning rate (cosine decay to 0 over the run).")
flags.DEFINE_integer("input_size", 112, "The regressor's input side (the 224 crop is resized to it).")
flags.DEFINE_bool("package", False, "Write the trained regressor into normalized_faces/pretrained/.")
flags.DEFINE_string("figures_dir", None, "Also write a small copy of the figure here (e.g. docs/results).")
flags.DEFINE_integer("limit", 0, "Use at most this many training photos (0: all; for a quick trial).")
flags.mark_flag_as_required("run_dir")

CENTRE = (lm.ALIGNED_SIZE - 1) / 2.0  # the aligned frame's centre in pixel-index coordinates


def prepare_data(run_dir: pathlib.Path) -> pathlib.Path:
    from data_prep import job, stages

    data_dir = run_dir / "data"
    if (data_dir / data.METADATA_FILE).exists():
        return data_dir
    config = stages.PrepConfig(mode="photos", apply_filters=False, validation_fraction=0.0)
    summary = job.run(FLAGS.lfw, str(data_dir), config, flag_values={"input": FLAGS.lfw})
    job.print_summary(summary, str(data_dir))
    return data_dir


def load_records(data_dir: pathlib.Path, people: set) -> dict:
    """{"image": [N, 224, 224, 3] uint8, "landmarks": [N, 68, 2]} of the records of these people."""
    images, points = [], []
    for split in data.SPLITS:
        try:
            files = data.record_files(data_dir, split)
        except FileNotFoundError:
            continue
        for serialized in tf.data.TFRecordDataset(files):
            parsed = tf.io.parse_single_example(serialized, data.FEATURE_SPEC)
            if parsed["identity"].numpy().decode() not in people:
                continue
            images.append(tf.io.decode_png(parsed["image"], channels=3).numpy())
            points.append(parsed["landmarks"].numpy().reshape(lm.NUM_LANDMARKS, 2))
    return {"image": np.stack(images), "landmarks": np.stack(points).astype(np.float32)}


def augment(image, points):
    """A random similarity + flip applied to an aligned crop [S, S, 3] uint8 and its points [68, 2]."""
    angle = tf.random.uniform([], -10.0, 10.0) * np.pi / 180.0
    scale = tf.random.uniform([], 0.92, 1.08)
    shift = tf.random.uniform([2], -6.0, 6.0)
    flip = tf.random.uniform([]) < 0.5
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.stack([tf.stack([cos, -sin]), tf.stack([sin, cos])])
    # Forward map of the points: p' = scale * R (p - c) + c + shift, then mirrored if flip.
    moved = scale * tf.matmul(points - CENTRE, rotation, transpose_b=True) + CENTRE + shift
    mirrored = tf.gather(tf.stack([2.0 * CENTRE - moved[:, 0], moved[:, 1]], axis=-1), lm.MIRROR)
    points = tf.where(flip, mirrored, moved)
    # The image op wants output -> input: q -> (unflip) p' -> p = R^T (p' - c - shift) / scale + c.
    inverse = tf.transpose(rotation) / scale
    offset = CENTRE - tf.linalg.matvec(inverse, CENTRE + shift)
    flip_x = tf.where(flip, -1.0, 1.0)
    flip_b = tf.where(flip, 2.0 * CENTRE, 0.0)
    matrix = tf.stack(
        [
            inverse[0, 0] * flip_x,
            inverse[0, 1],
            inverse[0, 0] * flip_b + offset[0],
            inverse[1, 0] * flip_x,
            inverse[1, 1],
            inverse[1, 0] * flip_b + offset[1],
            0.0,
            0.0,
        ]
    )
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None] / 255.0,
        transforms=matrix[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )[0]
    image = tf.image.random_brightness(image, 0.1)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    return tf.clip_by_value(image, 0.0, 1.0), points


def point_loss(true, predicted):
    """Mean point distance in units of the aligned interocular distance (55 px): NME's surrogate."""
    squared = tf.reduce_sum(tf.square(predicted - true), axis=-1)
    return tf.reduce_mean(tf.sqrt(squared + 1e-6)) / lm.INTEROCULAR_DISTANCE


def build(mean_landmarks):
    import keras

    regressor = lr.LandmarkRegressor(mean_landmarks, input_size=FLAGS.input_size, name="landmark_regressor")
    inputs = keras.Input([lm.ALIGNED_SIZE, lm.ALIGNED_SIZE, 3])
    return keras.Model(inputs, regressor(inputs)), regressor


def predict(regressor, images, batch=64) -> np.ndarray:
    out = [
        regressor(tf.constant(images[i : i + batch], tf.float32) / 255.0).numpy() for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


def train(run_dir: pathlib.Path, train_set: dict, validation_set: dict, mean_landmarks):
    import keras

    model, regressor = build(mean_landmarks)
    steps_per_epoch = len(train_set["image"]) // FLAGS.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps_per_epoch * FLAGS.epochs)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=point_loss)
    model.optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"), max_to_keep=2)
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {manager.latest_checkpoint} after epoch {len(history)}", flush=True)
    dataset = (
        tf.data.Dataset.from_tensor_slices((train_set["image"], train_set["landmarks"]))
        .shuffle(len(train_set["image"]), seed=len(history))
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(FLAGS.batch_size, drop_remainder=True)
        .prefetch(2)
    )
    for epoch in range(len(history), FLAGS.epochs):
        started = time.time()
        result = model.fit(dataset, epochs=1, steps_per_epoch=steps_per_epoch, verbose=0)
        validation = float(
            np.mean(lr.normalized_mean_error(predict(regressor, validation_set["image"]), validation_set["landmarks"]))
        )
        history.append(
            {"epoch": epoch + 1, "train_loss": float(result.history["loss"][-1]), "validation_nme": validation}
        )
        manager.save(checkpoint_number=epoch + 1)
        history_path.write_text(json.dumps(history, indent=2))
        print(
            f"epoch {epoch + 1}/{FLAGS.epochs}: train loss {history[-1]['train_loss']:.4f}, validation NME "
            f"{validation:.2%} ({time.time() - started:.0f} s)",
            flush=True,
        )
    return regressor, history


def report(regressor, test_set: dict, title: str) -> dict:
    errors = lr.normalized_mean_error(predict(regressor, test_set["image"]), test_set["landmarks"])
    figures = {
        "faces": int(len(errors)),
        "nme_mean": float(errors.mean()),
        "nme_median": float(np.median(errors)),
        "nme_p90": float(np.percentile(errors, 90)),
        "over_10_percent": float((errors > 0.10).mean()),
    }
    print(
        f"{title}: NME vs dlib on {figures['faces']} test faces: mean {figures['nme_mean']:.2%}, median "
        f"{figures['nme_median']:.2%}, 90th percentile {figures['nme_p90']:.2%}, > 10%: {figures['over_10_percent']:.1%}",
        flush=True,
    )
    return figures


def write_figure(regressor, test_set: dict, path: pathlib.Path, count=8):
    """Test faces: dlib's points (green) and the regressor's (red); a row of the best, a row of the worst."""
    predicted = predict(regressor, test_set["image"])
    errors = lr.normalized_mean_error(predicted, test_set["landmarks"])
    order = np.argsort(errors)
    picks = list(order[: count // 2]) + list(order[-(count // 2) :])
    cells = []
    for i in picks:
        image = visualize.draw_landmarks(test_set["image"][i], test_set["landmarks"][i], color=(40, 200, 40))
        cells.append(visualize.draw_landmarks(image, predicted[i], color=(230, 40, 40)))
    half = count // 2
    best, worst = errors[order[:half]], errors[order[-half:]]
    labels = [
        f"best {half}: NME {best.min():.1%}-{best.max():.1%}",
        f"worst {half}: NME {worst.min():.1%}-{worst.max():.1%}",
    ]
    grid = visualize.image_grid([cells[:half], cells[half:]], labels=labels)
    visualize.write_png(path, grid)


def _git_commit() -> str:
    import subprocess

    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def main(argv):
    del argv
    run_dir = pathlib.Path(FLAGS.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    people, split = lfw_split.load_split(FLAGS.lfw)
    data_dir = prepare_data(run_dir)
    mean_landmarks = np.asarray(data.load_metadata(str(data_dir))["mean_landmarks"], np.float32)
    train_set = load_records(data_dir, set(split["train"]) | set(split["other"]))
    if FLAGS.limit:
        train_set = {k: v[: FLAGS.limit] for k, v in train_set.items()}
    validation_set = load_records(data_dir, set(split["validation"]))
    test_set = load_records(data_dir, set(split["test"]))
    print(
        f"photos with a face: train {len(train_set['image'])}, validation {len(validation_set['image'])}, test {len(test_set['image'])}"
    )
    regressor, history = train(run_dir, train_set, validation_set, mean_landmarks)
    results = {"history": history, "trained": report(regressor, test_set, "trained (float32)")}
    write_figure(regressor, test_set, run_dir / "landmark_regressor_test.png")
    if FLAGS.package:
        provenance = {
            "trained_by": "python -m experiments.landmark_regressor "
            + " ".join(
                f"--{k}={v}"
                for k, v in (
                    ("epochs", FLAGS.epochs),
                    ("batch_size", FLAGS.batch_size),
                    ("learning_rate", FLAGS.learning_rate),
                    ("input_size", FLAGS.input_size),
                )
            ),
            "data": "LFW deep-funneled (../shared/faces/lfw): the train people and the people with < 3 photos "
            "(experiments/lfw_split.py); labels: dlib's 68-point shape predictor via data prep (photos mode, no filters)",
            "photos": {
                "train": len(train_set["image"]),
                "validation": len(validation_set["image"]),
                "test": len(test_set["image"]),
            },
            "test_against_dlib": results["trained"],
            "code_commit": _git_commit(),
            "weights": "float16",
            "licence": "Apache-2.0 (the code's); LFW's photos are not included, only weights trained on them",
        }
        lr.save_pretrained(regressor, provenance)
        results["packaged"] = report(lr.load_pretrained(), test_set, "packaged (float16)")
    (run_dir / "report.json").write_text(json.dumps(results, indent=2))
    if FLAGS.figures_dir:
        from PIL import Image

        # A small result figure (LFW photos only as such): 3/4 size, a 256-colour palette, ~110 KB.
        figure = Image.open(run_dir / "landmark_regressor_test.png").convert("RGB")
        figure = figure.resize((figure.width * 3 // 4, figure.height * 3 // 4), Image.LANCZOS)
        target = pathlib.Path(FLAGS.figures_dir) / "landmark_regressor_test.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)
        print(f"wrote {target}")
    print(f"wrote {run_dir / 'report.json'} and {run_dir / 'landmark_regressor_test.png'}")


if __name__ == "__main__":
    app.run(main)
