"""Does the paper's model gain from smiling photos kept by neutralizing them? (issue 15, beyond the paper)

    python -m experiments.neutralize_comparison --neutralize_with=EXPORT [--neutralize_strength=1]
        [--run_dir=runs/neutralize_comparison] [--num_morphs=15000] [--train_steps=5000] [--seeds=3]

Two arms, each exactly lfw_result's recipe for the model with the identity loss (its flags: morphs,
steps, batch, widths), on the same train + validation people, judged on the same test people:
RUN/plain, data prep as the paper (smiling and open-mouthed photos dropped), and RUN/neutralized,
data prep with --neutralize_with=EXPORT (a flow VAE export; such photos edited towards neutral and
kept when they then pass every filter, data_prep/neutralize.py). Each arm is an lfw_result run
folder (data/, with_identity/, evaluation_with_identity/ for seed 0, with_identity_seed<N>/ and
evaluation_with_identity_seed<N>/ for the others), resumable stage by stage. Each arm trains once
per seed (initial weights and data order), seed by seed (seed 0 of both arms, then seed 1, ...), so
a comparison stopped early is still balanced: two seeds of the same recipe on the same data scored
dlib rank-1 76.4% and 54.6% at 1,000 steps (README, Results), so one run per arm cannot tell the
data's effect from a run's luck. Prints and writes RUN/neutralize_comparison.md: people averaged and photos
kept per arm, and the test people's identification by dlib (not trained with) and FaceNet, per
seed and as the mean and range over seeds, and RUN/neutralize_comparison_grid.png: test people's
normalized faces from every arm and seed (--figures_dir: copied there too).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
from absl import app, flags

from experiments import lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_string("neutralize_with", None, "The flow VAE export that edits photos towards neutral.")
flags.DEFINE_float("neutralize_strength", 1.0, "Data prep's --neutralize_strength (1: the whole step to neutral).")
flags.mark_flag_as_required("neutralize_with")
FLAGS.set_default("run_dir", str(lfw_result.REPO / "runs" / "neutralize_comparison"))
FLAGS.set_default("num_morphs", 15_000)  # the README's Results recipe
FLAGS.set_default("train_steps", 5_000)
flags.DEFINE_integer(
    "seeds", 3, "Trainings per arm (seeds 0..N-1); the table gives each and their mean and range.", lower_bound=1
)

ARMS = {"plain": "expressions dropped (paper)", "neutralized": "smiling photos neutralized"}


def run_name(seed: int) -> str:
    """The run folder of a seed: seed 0 keeps lfw_result's name (runs made before seeds existed)."""
    return "with_identity" if seed == 0 else f"with_identity_seed{seed}"


def seeded_config(seed: int):
    """lfw_result.train_config's with-identity recipe in RUN/run_name(seed), with that seed."""

    def config_for(run_dir: pathlib.Path, name: str):
        return lfw_result.train_config(run_dir, "with_identity").replace(model_dir=str(run_dir / name), seed=seed)

    return config_for


def run_arms(run_dir: pathlib.Path, people, split, items, prep_options: dict) -> dict:
    """Per seed, per arm (RUN/<arm>): lfw_result's data prep (once per arm, before its first
    training), training with the identity loss and evaluation. Seed by seed, so that a comparison
    stopped early has both arms at every finished seed. Returns {arm: (data prep counts, [evaluation
    report per seed])}."""
    counts, reports = {}, {arm: [] for arm in prep_options}
    for seed in range(FLAGS.seeds):
        name, label = run_name(seed), f"with the identity loss, seed {seed}"
        for arm, options in prep_options.items():
            arm_dir = run_dir / arm
            if arm not in counts:
                counts[arm] = lfw_result.prepare_data(arm_dir, people, split, FLAGS.num_morphs, **options)
            lfw_result.make_training_stage(name, label, seeded_config(seed))(arm_dir)
            reports[arm].append(lfw_result.make_evaluation_stage(name, label)(arm_dir, items))
    return {arm: (counts[arm], reports[arm]) for arm in prep_options}


def seeds_grid(run_dir: pathlib.Path, people, split, arms, count: int) -> pathlib.Path:
    """photo | each arm's normalized face from every seed, for `count` test people (lfw_result's
    grid people): how much the seeds' faces differ, beside how much the arms' do."""
    short = {"plain": "paper's data", "neutralized": "neutralized"}
    runs = {(arm, seed): run_dir / arm / run_name(seed) for arm in arms for seed in range(FLAGS.seeds)}
    photos, outputs = lfw_result.normalize_test_people(people, split, count, runs)
    rows = [[photo, *(outputs[run][i] for run in runs)] for i, photo in enumerate(photos)]
    titles = ["photo", *(f"{short[arm]}, seed {seed}" for arm, seed in runs)]
    return lfw_result.save_small_grid(rows, titles, run_dir / "neutralize_comparison_grid.png")


FIGURES = ("rank1", "rank5", "genuine", "impostor")


def over_seeds(figures: list) -> dict:
    """{figure: (mean, min, max)} over the seeds' figure dicts."""
    by_key = {key: [f[key] for f in figures] for key in FIGURES}
    return {key: (np.mean(values), min(values), max(values)) for key, values in by_key.items()}


def table(results: dict) -> str:
    lines = [
        "| data | people averaged | photos kept (after an edit) | judge | seed | rank-1 | rank-5 "
        "| genuine within threshold | impostor within threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, (counts, reports) in results.items():
        data_cells = (
            f"| {ARMS[arm]} | {counts.get('identities_with_enough_photos')} | {counts.get('accepted')} "
            f"({counts.get('neutralized', 0)})"
        )
        for judge in lfw_result.JUDGES:
            figures = [report["judges"][judge]["normalized"] for report in reports]
            for seed, seed_figures in enumerate(figures):
                lines.append(f"{data_cells} | {judge} | {seed} | {lfw_result.cells(seed_figures)}")
            if len(figures) > 1:
                summary = over_seeds(figures)
                spread = " | ".join(
                    f"**{100 * mean:.1f}%** ({100 * low:.1f}-{100 * high:.1f})" for mean, low, high in summary.values()
                )
                lines.append(f"{data_cells} | {judge} | mean (range) | {spread} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    items = lfw_result.test_items(people, split)
    options = {
        "plain": {},
        "neutralized": {"neutralize_with": FLAGS.neutralize_with, "neutralize_strength": FLAGS.neutralize_strength},
    }
    results = run_arms(run_dir, people, split, items, options)
    text = table(results)
    (run_dir / "neutralize_comparison.md").write_text(text)
    (run_dir / "neutralize_comparison.json").write_text(
        json.dumps(
            {
                arm: {
                    "data": counts,
                    "normalized_by_seed": [
                        {judge: report["judges"][judge]["normalized"] for judge in lfw_result.JUDGES}
                        for report in reports
                    ],
                }
                for arm, (counts, reports) in results.items()
            },
            indent=2,
            default=float,
        )
    )
    grid = seeds_grid(run_dir, people, split, ARMS, FLAGS.grid_people)
    if FLAGS.figures_dir:
        pathlib.Path(FLAGS.figures_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(grid, pathlib.Path(FLAGS.figures_dir) / grid.name)
    print(text)
    print(f"faces of {FLAGS.grid_people} test people by arm and seed: {grid}")


if __name__ == "__main__":
    app.run(main)
