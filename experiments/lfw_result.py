"""The project's real result, in one resumable command: LFW -> data prep -> two trainings -> evaluation -> figures.

    python -m experiments.lfw_result [--lfw=../shared/faces/lfw] [--run_dir=runs/lfw_result] [--figures_dir=docs/results]

1. data prep (the Beam job) on the train + validation people of the committed split
   (experiments/lfw_split.py); the job's own hash split holds ~10% of them out for validation;
2. training with the FaceNet encoder and the identity loss (RUN/with_identity);
3. the paper's ablation (Fig. 12): the same without the identity loss (RUN/without_identity);
4. evaluation of both on the test people (never trained on, never tuned on), judged by dlib's
   network (which neither model was trained with) and by FaceNet, with the mean-face baseline;
5. figures: a grid of test people (photo | normalized | adjusted | without identity loss), the
   Fig. 12 histogram of FaceNet distances with and without the identity loss, results.md.

Every stage skips what is already on disk (data prep's metadata.json, training's checkpoints,
evaluation's report.json newer than its model), so a killed run continues with the same command.
Each stage prints its wall-clock time; results.md collects them. LFW is experiment data only: the
figures written to --figures_dir are small result figures, never photos on their own.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import signal
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import lfw_split  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("lfw", str(REPO.parent / "shared" / "faces" / "lfw"), "LFW deep-funneled, <Name>/<Name>_NNNN.jpg.")
flags.DEFINE_string("run_dir", str(REPO / "runs" / "lfw_result"), "Everything the run writes (resumable).")
flags.DEFINE_string("figures_dir", None, "Also copy the small result figures and results.md here (e.g. docs/results).")
flags.DEFINE_integer("num_morphs", 20_000, "Random morphs data prep makes (the paper: 1M).")
# The CPU recipe (README "Results" says how it was chosen). The paper's decoder has a 51M-weight
# fully connected layer (14 x 14 x 256 from 1024 features): 100 MB in float16, beyond the 40 MB
# the shipped model may take, and its 5 x 5 transposed convs at 224 px cost ~10 GFLOP a face.
flags.DEFINE_integer(
    "feature_dim", 512, "Width of the layer between the encoder's features and the decoders (paper: 1024)."
)
flags.DEFINE_integer("texture_base_channels", 128, "Channels at 14 x 14 in the texture decoder (paper: 256).")
flags.DEFINE_integer("batch_size", 16, "Batch size of both trainings.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam's learning rate.")
flags.DEFINE_integer("train_steps", 6000, "Steps of the model with the identity loss.")
flags.DEFINE_integer("ablation_steps", None, "Steps of the model without it (default: the same).")
flags.DEFINE_float("identity_weight", 0.1, "Weight of the identity loss (the paper's value is our default).")
flags.DEFINE_integer(
    "test_photos_per_person", 5, "Test photos per test person (the first by name): bounds the evaluation's time."
)
flags.DEFINE_integer("grid_people", 8, "Test people in the result grid.")

# Who judges every model these experiments train: dlib's network (never trained with) and FaceNet.
JUDGES = ("dlib_resnet", "facenet")
VARIANTS = {"with_identity": "with the identity loss", "without_identity": "without (ablation)"}


def stage(name):
    """Decorator: prints the stage's start, end and wall-clock time; records the time in RUN/times.json."""

    def wrap(function):
        def run(run_dir: pathlib.Path, *args, **kwargs):
            print(f"== {name}", flush=True)
            start = time.time()
            did_work = True  # until the stage says it found its work done
            try:
                result, did_work = function(run_dir, *args, **kwargs)
            finally:  # an interrupted stage's time counts too: a resumed stage adds to it
                seconds = time.time() - start
                if did_work:
                    _add_time(run_dir, name, seconds)
            print(f"== {name}: {'done' if did_work else 'already done'} in {seconds:.0f} s", flush=True)
            return result

        return run

    return wrap


def start_run():
    """What every experiment's main begins with: `kill` (SIGTERM) ends the run like Ctrl-C, so the
    stage in progress records its time; the run folder and the fixed LFW split. Returns
    (run_dir, people, split)."""
    signal.signal(signal.SIGTERM, _interrupted)
    people, split = lfw_split.load_split(FLAGS.lfw)
    return pathlib.Path(FLAGS.run_dir), people, split


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _add_time(run_dir: pathlib.Path, name: str, seconds: float) -> None:
    times_path = run_dir / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    times[name] = times.get(name, 0.0) + seconds
    run_dir.mkdir(parents=True, exist_ok=True)
    times_path.write_text(json.dumps(times, indent=2))


def photo_manifest(people: dict, names, path: pathlib.Path, per_person=None) -> pathlib.Path:
    """A data prep manifest (path, identity) of the given people's photos."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "identity"])
        for name in names:
            for photo in people[name][:per_person]:
                writer.writerow([str(photo), name])
    return path


@stage("data prep")
def prepare_data(run_dir: pathlib.Path, people, split, num_morphs, **prep_options):
    """Data prep of the train + validation people into RUN/data; prep_options: more PrepConfig fields
    (neutralize_comparison's --neutralize_with)."""
    from data_prep import job, stages
    from normalized_faces import data

    data_dir = run_dir / "data"
    if (data_dir / data.METADATA_FILE).exists():
        return json.loads((data_dir / data.METADATA_FILE).read_text())["counts"], False
    manifest = photo_manifest(people, split["train"] + split["validation"], run_dir / "trainval_photos.csv")
    config = stages.PrepConfig(num_morphs=num_morphs, **prep_options)
    flag_values = {"num_morphs": num_morphs, "input": str(manifest), **prep_options}
    summary = job.run(str(manifest), str(data_dir), config, flag_values=flag_values)
    job.print_summary(summary, str(data_dir))
    return summary, True


# Checkpoints, summaries and validation of every training these experiments run.
SCHEDULE = dict(
    checkpoint_interval=250, summary_interval=50, validation_interval=1000, validation_steps=5, shuffle_buffer=2000
)


def train_config(run_dir: pathlib.Path, name: str):
    from normalized_faces.config import TrainConfig

    with_identity = name == "with_identity"
    steps = FLAGS.train_steps if with_identity else (FLAGS.ablation_steps or FLAGS.train_steps)
    return TrainConfig().replace(
        data_dir=str(run_dir / "data"),
        model_dir=str(run_dir / name),
        encoder="facenet",
        batch_size=FLAGS.batch_size,
        train_steps=steps,
        learning_rate=FLAGS.learning_rate,
        identity_weight=FLAGS.identity_weight if with_identity else 0.0,
        feature_dim=FLAGS.feature_dim,
        landmark_hidden=(512,),
        texture_base_channels=FLAGS.texture_base_channels,
        texture_min_channels=32,
        texture_upsampling="resize",
        **SCHEDULE,
    )


def make_training_stage(name, label=None, config_for=None):
    """Trains (or resumes) RUN/<name> from `config_for(run_dir, name)` (default: train_config)."""

    @stage(f"training {label or VARIANTS[name]}")
    def train_variant(run_dir: pathlib.Path):
        from normalized_faces.train import train

        result = train((config_for or train_config)(run_dir, name))
        return result, result["status"] != "already_done"

    return train_variant


def trained_steps(model_dir: pathlib.Path) -> int | None:
    """The step of a run's latest checkpoint (what was trained, not the configured count), or None."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(pathlib.Path(model_dir) / "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else None


def _latest_checkpoint_time(model_dir: pathlib.Path) -> float:
    files = list((model_dir / "checkpoints").glob("*.index"))
    return max((f.stat().st_mtime for f in files), default=0.0)


def make_evaluation_stage(name, label=None):
    """Evaluates the run RUN/<name> on the test items (skipped when its report is newer than its model)."""

    @stage(f"evaluation {label or VARIANTS[name]}")
    def evaluate_variant(run_dir: pathlib.Path, items):
        from normalized_faces import evaluate

        output_dir = run_dir / f"evaluation_{name}"
        report_path = output_dir / "report.json"
        if report_path.exists() and report_path.stat().st_mtime > _latest_checkpoint_time(run_dir / name):
            return json.loads(report_path.read_text()), False
        return evaluate.evaluate(str(run_dir / name), items, output_dir, judges=list(JUDGES)), True

    return evaluate_variant


def test_items(people, split):
    """(path, identity, None) of the test people's first photos (by name)."""
    return [(str(p), name, None) for name in split["test"] for p in people[name][: FLAGS.test_photos_per_person]]


def test_people_photos(people, split, count: int) -> np.ndarray:
    """The aligned first photos of `count` test people evenly spread over the split: uint8 [N, S, S, 3]
    (the largest face of each)."""
    from normalized_faces.cli import collect_faces

    names = [split["test"][i] for i in np.linspace(0, len(split["test"]) - 1, count).astype(int)]
    found, _ = collect_faces([(people[name][0], None) for name in names])
    return np.stack([face.aligned.image for face in found if face.index == 0])


def normalize_test_people(people, split, count: int, model_dirs: dict):
    """test_people_photos, each normalized by every model in model_dirs ({name: folder}). Returns
    (photos uint8 [N, S, S, 3], {name: normalized faces uint8 [N, S, S, 3]})."""
    from normalized_faces import inference

    photos = test_people_photos(people, split, count)
    crops = photos.astype(np.float32) / 255.0
    return photos, {
        name: inference.load_model(str(folder))(crops)["normalized_face"] for name, folder in model_dirs.items()
    }


def save_small_grid(rows, column_titles, path: pathlib.Path) -> pathlib.Path:
    """visualize.image_grid of the rows at half size in a 256-colour palette: a README figure (they
    stay under 300 KB; full colour would be ~550 KB, with no visible difference; LFW photos only as such)."""
    import cv2
    from PIL import Image

    from normalized_faces import visualize

    grid = visualize.image_grid(rows, column_titles=column_titles)
    grid = cv2.resize(grid, (grid.shape[1] // 2, grid.shape[0] // 2), interpolation=cv2.INTER_AREA)
    Image.fromarray(grid).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def result_grid(run_dir: pathlib.Path, people, split, count: int) -> pathlib.Path:
    """photo | normalized | adjusted | without the identity loss, for `count` test people (their first photo)."""
    from normalized_faces import adjust

    photos, outputs = normalize_test_people(people, split, count, {name: run_dir / name for name in VARIANTS})
    rows = [
        [photo, normalized, adjust.adjust_photo(photo, photo, normalized), without]
        for photo, normalized, without in zip(photos, outputs["with_identity"], outputs["without_identity"])
    ]
    titles = ["photo", "normalized", "adjusted", "no identity loss"]
    return save_small_grid(rows, titles, run_dir / "results_grid.png")


def fig12_histogram(run_dir: pathlib.Path, reports: dict) -> pathlib.Path:
    """The paper's Fig. 12: FaceNet distance between each test photo and its normalized face, with and without the identity loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    threshold = reports["with_identity"]["judges"]["facenet"]["threshold"]["value"]
    values = {name: [p["facenet_distance"] for p in reports[name]["per_photo"]] for name in VARIANTS}
    bins = np.linspace(0, max(max(v) for v in values.values()) * 1.05, 40)
    for (name, label), color in zip(VARIANTS.items(), ("tab:blue", "tab:orange")):
        inside = np.mean(np.asarray(values[name]) < threshold)
        axis.hist(values[name], bins=bins, alpha=0.6, color=color, label=f"{label}: {inside:.0%} under the threshold")
    axis.axvline(threshold, color="k", linestyle="--", label=f"FaceNet threshold {threshold:g}")
    axis.set_xlabel("squared L2 distance, FaceNet embedding: test photo vs its normalized face")
    axis.set_ylabel("test photos")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = run_dir / "fig12_histogram.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def cells(figures, pairs=True) -> str:
    """A results row's figure cells: rank-1 | rank-5 | genuine | impostor (blank without pairs)."""
    pair_cells = f"{_pct(figures['genuine'])} | {_pct(figures['impostor'])} |" if pairs else " | |"
    return f"{_pct(figures['rank1'])} | {_pct(figures['rank5'])} | {pair_cells}"


def reference_rows(judge: str, judged: dict, blank_columns: int = 0) -> list:
    """The rows every model is read against: mean-face baseline, the photos' ceiling, chance.

    judged: one model's report for this judge (the baseline and the ceiling do not depend on the
    model); blank_columns: empty cells after the label (a table with more columns before the figures).
    """
    before = "| " * blank_columns
    rows = []
    if judged.get("mean_face_baseline"):
        rows.append(f"| {judge} | mean face (baseline) | {before}{cells(judged['mean_face_baseline'])}")
    rows.append(f"| {judge} | the photos themselves (ceiling) | {before}{cells(judged['photos_ceiling'], pairs=False)}")
    rows.append(f"| {judge} | chance | {before}{cells(judged['chance'], pairs=False)}")
    return rows


def results_markdown(reports: dict, data_counts: dict, times: dict) -> str:
    lines = [
        "| judge | model | rank-1 | rank-5 | genuine within threshold | impostor within threshold |",
        "|---|---|---|---|---|---|",
    ]
    for judge in JUDGES:
        for name, label in VARIANTS.items():
            lines.append(f"| {judge} | normalized, {label} | {cells(reports[name]['judges'][judge]['normalized'])}")
        lines += reference_rows(judge, reports["with_identity"]["judges"][judge])
    first = reports["with_identity"]
    lines += [
        "",
        f"Test: {first['judges']['dlib_resnet']['people']} people, {first['evaluated']} photos "
        f"({first['judges']['dlib_resnet']['probes']} probes against one gallery photo per person).",
        f"Data prep: {data_counts.get('inputs')} photos in, {data_counts.get('accepted')} kept; records {data_counts.get('records')}.",
        "Wall-clock (2 cores): " + ", ".join(f"{name} {seconds / 60:.0f} min" for name, seconds in times.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = start_run()
    run_dir.mkdir(parents=True, exist_ok=True)
    data_counts = prepare_data(run_dir, people, split, FLAGS.num_morphs)
    for name in VARIANTS:
        make_training_stage(name)(run_dir)
    items = test_items(people, split)
    reports = {name: make_evaluation_stage(name)(run_dir, items) for name in VARIANTS}
    figures = [result_grid(run_dir, people, split, FLAGS.grid_people), fig12_histogram(run_dir, reports)]
    for name in VARIANTS:
        figures.append(run_dir / f"evaluation_{name}" / "distance_histogram.png")
    times = json.loads((run_dir / "times.json").read_text())
    markdown = results_markdown(reports, data_counts, times)
    (run_dir / "results.md").write_text(markdown)
    print(markdown)
    if FLAGS.figures_dir:
        target = pathlib.Path(FLAGS.figures_dir)
        target.mkdir(parents=True, exist_ok=True)
        for path in figures:
            shutil.copy(path, target / (path.name if path.parent == run_dir else f"{path.parent.name}_{path.name}"))
        shutil.copy(run_dir / "results.md", target / "results.md")
        print(f"copied the figures and results.md to {target}")


if __name__ == "__main__":
    app.run(main)
