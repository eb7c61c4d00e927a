"""The label-free variant (Wang 2019) against the paper's model, on the same LFW people, in one
resumable command (issue: the thesis's Figs. 4-5 and its ablations 4-7 / 4-8).

    python -m experiments.wang2019_comparison --run_dir=runs/lfw_result [--wang_steps=2500]
        [--wang_ablation_steps=500] [--figures_dir=docs/results]

It shares experiments/lfw_result.py's run folder and its stages' bookkeeping (RUN/times.json, skip
what is done). The paper's model is the one shipped with the package (trained by that command on
the same train people: normalized_faces/pretrained/PROVENANCE.md), evaluated the same way:
1. data prep in photos mode (one record per photo that passes the filters) of the same train +
   validation people -> RUN/photo_data;
2. training of the variant at the CPU recipe (--output_size 160, --fc_width) -> RUN/wang2019, and
   the ablations without the GAN, without the mask, without the landmark loss, and the full variant
   for as long as they train, their reference (--wang_ablation_steps);
3. evaluation of each on the test people with the same evaluation as the paper's model;
4. a side-by-side figure (photo | paper's model | this variant | its mask) and a table.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from absl import app, flags

from experiments import lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_integer("output_size", 160, "The variant's output side (thesis: 320; 160 is the CPU recipe).")
flags.DEFINE_integer("fc_width", 1024, "Width of its two fully connected layers (thesis: 4800).")
flags.DEFINE_integer("wang_batch_size", 8, "Its batch size.")
flags.DEFINE_float("wang_learning_rate", 2e-4, "Its generator's Adam learning rate.")
flags.DEFINE_integer("wang_steps", 2500, "Steps of the full variant.")
flags.DEFINE_integer("wang_ablation_steps", 500, "Steps of each ablation.")

ABLATIONS = {
    "wang2019": ("Wang 2019", {}),
    # The full variant at the ablations' length: what each ablation is compared with.
    "wang2019_short": ("Wang 2019 (the ablations' length)", {}),
    "wang2019_no_gan": ("Wang 2019 without the GAN", {"wang_gan_weight": 0.0}),
    "wang2019_no_mask": ("Wang 2019 without the mask loss", {"wang_mask_weight": 0.0}),
    "wang2019_no_landmarks": ("Wang 2019 without the landmark loss", {"wang_landmark_weight": 0.0}),
}


@lfw_result.stage("data prep, photos mode")
def prepare_photo_data(run_dir: pathlib.Path, people, split):
    from data_prep import job, stages
    from normalized_faces import data

    data_dir = run_dir / "photo_data"
    if (data_dir / data.METADATA_FILE).exists():
        return json.loads((data_dir / data.METADATA_FILE).read_text())["counts"], False
    manifest = lfw_result.photo_manifest(people, split["train"] + split["validation"], run_dir / "trainval_photos.csv")
    summary = job.run(
        str(manifest), str(data_dir), stages.PrepConfig(mode="photos"), flag_values={"input": str(manifest)}
    )
    job.print_summary(summary, str(data_dir))
    return summary, True


def train_config(run_dir: pathlib.Path, name: str):
    from normalized_faces.config import TrainConfig

    overrides = ABLATIONS[name][1]
    return TrainConfig().replace(
        method="wang2019",
        data_dir=str(run_dir / "photo_data"),
        model_dir=str(run_dir / name),
        encoder="facenet",
        wang_output_size=FLAGS.output_size,
        wang_fc_width=FLAGS.fc_width,
        batch_size=FLAGS.wang_batch_size,
        learning_rate=FLAGS.wang_learning_rate,
        train_steps=FLAGS.wang_steps if name == "wang2019" else FLAGS.wang_ablation_steps,
        **lfw_result.SCHEDULE,
        **overrides,
    )


def side_by_side(run_dir: pathlib.Path, people, split, count: int) -> pathlib.Path:
    """photo | paper's model | Wang 2019 | its mask, for `count` test people (their first photo)."""
    import numpy as np
    import tensorflow as tf

    from normalized_faces import inference

    photos = lfw_result.test_people_photos(people, split, count)
    crops = photos.astype(np.float32) / 255.0
    paper = inference.load_model(None)(crops)["normalized_face"]
    wang = inference.restore_training_model(run_dir / "wang2019")
    out = wang(crops)
    size = crops.shape[1]
    faces = (np.clip(out["rendered"].numpy(), 0, 1) * 255).round().astype(np.uint8)
    masks = np.repeat(tf.image.resize(out["mask"], [size, size]).numpy(), 3, axis=-1)
    masks = (np.clip(masks, 0, 1) * 255).round().astype(np.uint8)
    rows = [[photo, paper[i], faces[i], masks[i]] for i, photo in enumerate(photos)]
    titles = ["photo", "paper's model", "Wang 2019", "its mask"]
    return lfw_result.save_small_grid(rows, titles, run_dir / "wang2019_side_by_side.png")


@lfw_result.stage("evaluation of the shipped model (the paper's)")
def evaluate_shipped_model(run_dir: pathlib.Path, items):
    from normalized_faces import evaluate

    output_dir = run_dir / "evaluation_shipped"
    if (output_dir / "report.json").exists():
        return json.loads((output_dir / "report.json").read_text()), False
    return evaluate.evaluate(None, items, output_dir, judges=list(lfw_result.JUDGES)), True


def table(reports: dict, steps: dict) -> str:
    """The evaluation's figures per model and judge, with the mean-face baseline and the photos' ceiling."""
    lines = [
        "| judge | model | training steps | rank-1 | rank-5 | genuine within threshold | impostor within threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for judge in lfw_result.JUDGES:
        for name, report in reports.items():
            figures = lfw_result.cells(report["judges"][judge]["normalized"])
            lines.append(f"| {judge} | {name} | {steps.get(name, '')} | {figures}")
        lines += lfw_result.reference_rows(judge, next(iter(reports.values()))["judges"][judge], blank_columns=1)
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    prepare_photo_data(run_dir, people, split)
    for name, (label, _) in ABLATIONS.items():
        lfw_result.make_training_stage(name, label, train_config)(run_dir)
    items = lfw_result.test_items(people, split)
    reports = {"paper's model (shipped)": evaluate_shipped_model(run_dir, items)}
    for name, (label, _) in ABLATIONS.items():
        reports[label] = lfw_result.make_evaluation_stage(name, label)(run_dir, items)
    figure = side_by_side(run_dir, people, split, FLAGS.grid_people)
    steps = {"paper's model (shipped)": "5,000 x 16 (shipped)"}
    for name, (label, _) in ABLATIONS.items():
        steps[label] = f"{lfw_result.trained_steps(run_dir / name):,} x {FLAGS.wang_batch_size}"
    markdown = table(reports, steps)
    (run_dir / "wang2019_results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {figure} and {run_dir / 'wang2019_results.md'}")
    if FLAGS.figures_dir:
        target = pathlib.Path(FLAGS.figures_dir)
        target.mkdir(parents=True, exist_ok=True)
        for path in (figure, run_dir / "wang2019_results.md"):
            shutil.copy(path, target / path.name)
        print(f"copied the figure and wang2019_results.md to {target}")


if __name__ == "__main__":
    app.run(main)
