"""`make demo`: the product on real photos in about a minute; `make demo-pipeline`: the whole pipeline.

    python demo_main.py [--output_dir=demo_output] [--photos=PHOTO,...]
    python demo_main.py --pipeline [--input=PHOTOS] [--train_steps=300]

Default (photos): the bundled sample photos (normalized_faces/samples, public-domain official
portraits, SOURCES.md) or --photos, normalized by the model shipped with the package ->
demo_output/normalized/grid.png (photo | normalized | adjusted), then the evaluation printed:
each photo against its own normalized face and against the others', judged by a recognizer the
model was not trained with and by its own, beside the training data's mean face.

--pipeline, offline, in minutes on 2 cores:
1. photos: synthetic faces with known landmarks (or --input: your <identity>/<photo> folder)
2. data prep: the Beam job -> TFRecords of averaged identities and random morphs
3. training: the tiny config with the offline dlib encoder
4. export: a SavedModel for TF Serving
5. normalize-face on held-back photos (people not seen in training) -> grid.png
6. evaluation: photo vs normalized face distances, histogram, report
plus warp_demo.png, the spline warp on its own. Prints where each result is.
"""

from __future__ import annotations

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where the demo writes everything.")
flags.DEFINE_bool(
    "pipeline",
    False,
    "Run the whole pipeline (synthetic photos -> data prep -> training -> export -> evaluation) instead.",
)
flags.DEFINE_list("photos", [], "Photos for the default demo (default: the bundled samples).")
flags.DEFINE_string(
    "input",
    None,
    "--pipeline: your photos, <root>/<identity>/<photo> (>= 3 usable photos per person); default: synthetic faces.",
)
flags.DEFINE_integer("train_steps", 300, "Training steps of the tiny model.")
flags.DEFINE_integer("num_morphs", 80, "Random morphs made by data prep.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic faces.")
flags.DEFINE_integer("flow_stride", 1, "1: exact warp; s > 1: coarse flow (faster, see README).")


def run_warp_demo(output_dir: pathlib.Path, seed: int = 0, flow_stride: int = 1) -> pathlib.Path:
    """The spline warp alone: a synthetic face moved onto the template landmarks (warp_demo.png)."""
    from data_prep import synthetic
    from normalized_faces import landmarks, visualize, warp

    rng = np.random.default_rng(seed)
    identity = synthetic.random_identity(rng, "demo")
    photo, source = synthetic.synthetic_photo(identity, rng, roll_deg=12, mouth_open=6.0, smile=3.0)
    target = landmarks.template_landmarks()
    start = time.perf_counter()
    warped, flow = warp.sparse_image_warp(
        photo[None].astype(np.float32) / 255.0,
        source[None].astype(np.float32),
        target[None].astype(np.float32),
        flow_stride=flow_stride,
    )
    seconds = time.perf_counter() - start
    flow = flow[0].numpy()
    sheet = visualize.image_grid(
        [
            [
                visualize.draw_landmarks(photo, source),
                visualize.draw_flow_arrows(visualize.flow_to_rgb(flow), flow),
                visualize.draw_landmarks(warped[0].numpy(), target, color=(40, 200, 40)),
            ]
        ],
        column_titles=["photo + its landmarks", "flow (arrows: from -> to)", "warped + template landmarks"],
        scale=2,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "warp_demo.png"
    visualize.write_png(path, sheet)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    print(
        f"warped a 224x224 face: 68 landmarks + 16 border points, order 1, {1000 * seconds:.0f} ms (first call includes tracing)"
    )
    print(f"flow: mean {magnitude.mean():.2f} px, max {magnitude.max():.2f} px")
    return path


def run_demo(output_dir: pathlib.Path, photos_dir=None, train_steps=300, num_morphs=80, seed=0) -> dict:
    """Runs steps 1-6; returns the paths it wrote."""
    from data_prep import job, stages, synthetic
    from export import saved_model
    from normalized_faces import cli, evaluate, train

    output_dir = pathlib.Path(output_dir)
    started = time.time()
    paths = {}

    def step(text):
        print(f"[{time.time() - started:5.0f}s] {text}", flush=True)

    if photos_dir:
        step(f"1/6 photos: {photos_dir}")
        training_input = str(photos_dir)
        held_back = evaluate.items_from(photos=str(photos_dir))
        held_back_note = "your photos (the same ones the model trained on: hold some back for a fair test)"
    else:
        step("1/6 photos: synthetic people with known landmarks (10 to train on, 4 held back)")
        training_input = synthetic.write_synthetic_dataset(
            output_dir / "photos" / "train", num_identities=10, photos_per_identity=4, seed=seed
        )
        held_back_manifest = synthetic.write_synthetic_dataset(
            output_dir / "photos" / "held_back", num_identities=4, photos_per_identity=3, seed=seed + 1000
        )
        held_back = evaluate.items_from(manifest=held_back_manifest)
        held_back_note = "4 synthetic people the model never saw"
    step("2/6 data prep (Beam): align, filter, average identities, morph")
    data_dir = output_dir / "data"
    summary = job.run(
        training_input,
        str(data_dir),
        stages.PrepConfig(num_morphs=num_morphs, validation_fraction=0.3, seed=seed),
        ["--direct_running_mode=in_memory"],
        num_shards=2,
        preview_count=8,
    )
    job.print_summary(summary, str(data_dir))
    paths["data preview"] = data_dir / "preview.png"
    step(f"3/6 training the tiny model for {train_steps} steps (dlib encoder, CPU)")
    run_dir = output_dir / "run"
    train.train(
        train.tiny_config(
            str(run_dir), data_dir=str(data_dir), train_steps=train_steps, checkpoint_interval=max(train_steps // 4, 1)
        )
    )
    samples = sorted((run_dir / "samples").glob("step_*.png"))
    if samples:
        paths["training samples"] = samples[-1]
    step("4/6 export for TF Serving")
    exported = saved_model.export(run_dir, output_dir / "export", overwrite=True, version=1)
    paths["SavedModel"] = exported
    step(f"5/6 normalize-face on {held_back_note}")
    normalized_dir = output_dir / "normalized"
    cli.run(
        str(exported),
        str(normalized_dir),
        [],
        adjust_colors=True,
        items=[(path, points) for path, _, points in held_back],
    )
    paths["normalized faces"] = normalized_dir / "grid.png"
    step("6/6 evaluation: is the normalized face still the same person?")
    evaluate.evaluate(str(exported), held_back, output_dir / "evaluation")
    paths["evaluation histogram"] = output_dir / "evaluation" / "distance_histogram.png"
    paths["evaluation report"] = output_dir / "evaluation" / "report.json"
    paths["warp demo"] = run_warp_demo(output_dir, seed, FLAGS.flow_stride if FLAGS.is_parsed() else 1)
    step("done")
    return paths


SAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "normalized_faces" / "samples"


def run_photos_demo(output_dir: pathlib.Path, photos=()) -> dict:
    """The shipped model on real photos: grid.png and the evaluation (report.json, histograms)."""
    from normalized_faces import cli, evaluate

    output_dir = pathlib.Path(output_dir)
    started = time.time()
    photos = [pathlib.Path(p) for p in photos] or sorted(SAMPLES_DIR.glob("*.jpg"))
    print(f"[{time.time() - started:4.0f}s] normalizing {len(photos)} photos with the shipped model", flush=True)
    normalized_dir = output_dir / "normalized"
    cli.run(None, str(normalized_dir), [str(p) for p in photos], adjust_colors=True)
    print(
        f"[{time.time() - started:4.0f}s] evaluation: each photo vs its normalized face, and vs the other people's",
        flush=True,
    )
    # Each photo is its own person here: genuine = photo vs its own normalized face; impostor = vs the others'.
    evaluate.evaluate(None, [(p, p.stem, None) for p in photos], output_dir / "evaluation")
    print(f"[{time.time() - started:4.0f}s] done", flush=True)
    return {
        "normalized faces": normalized_dir / "grid.png",
        "evaluation histogram": output_dir / "evaluation" / "distance_histogram.png",
        "evaluation report": output_dir / "evaluation" / "report.json",
    }


def main(argv):
    del argv
    if not FLAGS.pipeline:
        paths = run_photos_demo(pathlib.Path(FLAGS.output_dir), FLAGS.photos)
        print("\nWhat the demo made (make demo-pipeline runs the whole pipeline instead):")
        for name, path in paths.items():
            print(f"  {name:<22} {pathlib.Path(path).resolve()}")
        return
    paths = run_demo(pathlib.Path(FLAGS.output_dir), FLAGS.input, FLAGS.train_steps, FLAGS.num_morphs, FLAGS.seed)
    print("\nWhat the demo made:")
    for name, path in paths.items():
        print(f"  {name:<22} {pathlib.Path(path).resolve()}")


if __name__ == "__main__":
    app.run(main)
