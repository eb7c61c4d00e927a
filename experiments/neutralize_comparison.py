"""Does the paper's model gain from smiling photos kept by neutralizing them? (issue 15, beyond the paper)

    python -m experiments.neutralize_comparison --neutralize_with=EXPORT [--neutralize_strength=1]
        [--run_dir=runs/neutralize_comparison] [--num_morphs=15000] [--train_steps=5000]

Two arms, each exactly lfw_result's recipe for the model with the identity loss (its flags: morphs,
steps, batch, widths), on the same train + validation people, judged on the same test people:
RUN/plain, data prep as the paper (smiling and open-mouthed photos dropped), and RUN/neutralized,
data prep with --neutralize_with=EXPORT (a flow VAE export; such photos edited towards neutral and
kept when they then pass every filter, data_prep/neutralize.py). Each arm is an lfw_result run
folder (data/, with_identity/, evaluation_with_identity/), resumable stage by stage. Prints and
writes RUN/neutralize_comparison.md: people averaged and photos kept per arm, and the test people's
identification by dlib (not trained with) and FaceNet.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from experiments import lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_string("neutralize_with", None, "The flow VAE export that edits photos towards neutral.")
flags.DEFINE_float("neutralize_strength", 1.0, "Data prep's --neutralize_strength (1: the whole step to neutral).")
flags.mark_flag_as_required("neutralize_with")
FLAGS.set_default("run_dir", str(lfw_result.REPO / "runs" / "neutralize_comparison"))
FLAGS.set_default("num_morphs", 15_000)  # the README's Results recipe
FLAGS.set_default("train_steps", 5_000)

ARMS = {"plain": "expressions dropped (paper)", "neutralized": "smiling photos neutralized"}


def run_arm(arm_dir: pathlib.Path, people, split, items, prep_options: dict) -> tuple[dict, dict]:
    """lfw_result's data prep, training with the identity loss and evaluation in arm_dir."""
    counts = lfw_result.prepare_data(arm_dir, people, split, FLAGS.num_morphs, **prep_options)
    lfw_result.make_training_stage("with_identity")(arm_dir)
    report = lfw_result.make_evaluation_stage("with_identity")(arm_dir, items)
    return counts, report


def table(results: dict) -> str:
    lines = [
        "| data | people averaged | photos kept (after an edit) | judge | rank-1 | rank-5 "
        "| genuine within threshold | impostor within threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, (counts, report) in results.items():
        for judge in ("dlib_resnet", "facenet"):
            lines.append(
                f"| {ARMS[arm]} | {counts.get('identities_with_enough_photos')} | {counts.get('accepted')} "
                f"({counts.get('neutralized', 0)}) | {judge} | {lfw_result.cells(report['judges'][judge]['normalized'])}"
            )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    items = lfw_result.test_items(people, split)
    options = {
        "plain": {},
        "neutralized": {"neutralize_with": FLAGS.neutralize_with, "neutralize_strength": FLAGS.neutralize_strength},
    }
    results = {arm: run_arm(run_dir / arm, people, split, items, options[arm]) for arm in ARMS}
    text = table(results)
    (run_dir / "neutralize_comparison.md").write_text(text)
    (run_dir / "neutralize_comparison.json").write_text(
        json.dumps({arm: {"data": counts} for arm, (counts, _) in results.items()}, indent=2)
    )
    print(text)


if __name__ == "__main__":
    app.run(main)
