"""How many more LFW people the paper's data prep keeps when smiling photos are neutralized (issue 15).

    python -m experiments.neutralize_counts --neutralize_with=EXPORT [--run_dir=runs/neutralize]
        [--neutralize_strength=1] [--num_morphs=0] [--max_people=N]

EXPORT: a flow VAE SavedModel (`python -m export.saved_model --model_dir=RUN/flow ...` of an
fvae_result run). Runs data prep in the paper's mode (identity averages; the default filters) on
the train + validation people of the fixed split twice, side by side on the same photos: as the
paper does, dropping photos that smile or open the mouth (RUN/plain), and with --neutralize_with
(RUN/neutralized), where such photos are edited towards neutral and kept if they then pass every
filter. Prints and writes RUN/neutralize_counts.md: photos accepted, accepted after an edit,
rejected for the expression, and identities with at least --min_photos_per_identity photos (the
ones the paper's data can average); how the photos kept after an edit look to FER2013's expression
model (normalized_faces/expression_judge.py) before and after it, next to photos the paper's filters
accept (RUN/neutralize_judge.json); and draws RUN/neutralized_examples.png (photos kept only
because of the edit: before | after). Each data prep is skipped when its metadata.json exists.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_string("neutralize_with", None, "The flow VAE export that edits photos towards neutral.")
flags.DEFINE_float("neutralize_strength", 1.0, "Data prep's --neutralize_strength (1: the whole step to neutral).")
flags.DEFINE_integer("min_photos_per_identity", 3, "Photos an identity needs to be averaged (paper: 3).")
flags.DEFINE_integer("max_people", None, "Only the first this many people (by name): a quick trial of the command.")
flags.mark_flag_as_required("neutralize_with")
FLAGS.set_default("run_dir", str(lfw_result.REPO / "runs" / "neutralize"))
# Morphs do not change who has enough photos; none by default keeps the two jobs short.
FLAGS.set_default("num_morphs", 0)


def prepare(run_dir: pathlib.Path, folder: str, people, split, neutralize_with):
    """Data prep of the train + validation people into RUN/folder; returns its counts."""
    from data_prep import job, stages
    from normalized_faces import data

    data_dir = run_dir / folder
    if (data_dir / data.METADATA_FILE).exists():
        return json.loads((data_dir / data.METADATA_FILE).read_text())["counts"], False
    names = sorted(split["train"] + split["validation"])[: FLAGS.max_people]
    manifest = lfw_result.photo_manifest(people, names, run_dir / "photos.csv")
    config = stages.PrepConfig(
        num_morphs=FLAGS.num_morphs,
        min_photos_per_identity=FLAGS.min_photos_per_identity,
        neutralize_with=neutralize_with,
        neutralize_strength=FLAGS.neutralize_strength,
    )
    flag_values = {"input": str(manifest), "num_morphs": FLAGS.num_morphs, "neutralize_with": neutralize_with}
    if neutralize_with:
        flag_values["neutralize_strength"] = FLAGS.neutralize_strength
    summary = job.run(str(manifest), str(data_dir), config, flag_values=flag_values)
    job.print_summary(summary, str(data_dir))
    return summary, True


@lfw_result.stage("data prep, the paper's filters (expressions dropped)")
def prepare_plain(run_dir, people, split):
    return prepare(run_dir, "plain", people, split, None)


@lfw_result.stage("data prep, the paper's filters with --neutralize_with")
def prepare_neutralized(run_dir, people, split):
    return prepare(run_dir, "neutralized", people, split, FLAGS.neutralize_with)


def table(plain: dict, neutralized: dict) -> str:
    from data_prep.neutralize import EXPRESSION_REASONS

    def expression_rejects(counts):
        return sum(v for k, v in counts["rejected_by_reason"].items() if k in EXPRESSION_REASONS)

    rows = [
        ("photos in", "inputs"),
        ("photos accepted", "accepted"),
        ("of them after an edit towards neutral", "neutralized"),
        (f"identities with >= {FLAGS.min_photos_per_identity} photos", "identities_with_enough_photos"),
    ]
    lines = ["| | expressions dropped (paper) | neutralized |", "|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {plain.get(key, 0)} | {neutralized.get(key, 0)} |")
    lines.append(
        f"| rejected for smiling or an open mouth | {expression_rejects(plain)} | {expression_rejects(neutralized)} |"
    )
    return "\n".join(lines) + "\n"


def kept_by_the_edit(run_dir: pathlib.Path) -> list:
    """rejected.jsonl records of the photos the paper's filters drop for smiling or an open mouth and
    --neutralize_with keeps, nearest their threshold first."""
    from data_prep.neutralize import EXPRESSION_REASONS

    still_rejected = rejected_by_name(run_dir, "neutralized")
    kept = [
        r
        for name, r in rejected_by_name(run_dir, "plain").items()
        if r["reason"] in EXPRESSION_REASONS and name not in still_rejected
    ]
    return sorted(kept, key=lambda r: r["value"] / r["threshold"])


def rejected_by_name(run_dir: pathlib.Path, folder: str) -> dict:
    # By file name: the two runs may have read the photos through different paths (LFW's names are unique).
    lines = (run_dir / folder / "rejected.jsonl").read_text().splitlines()
    return {pathlib.Path(r["path"]).name: r for r in map(json.loads, lines)}


def aligned_and_edited(paths) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """The photos' largest faces aligned as data prep aligns them, and the export's edit of each (the
    same edit data prep made, deterministic). Returns (paths found, crops, edits, landmarks)."""
    from data_prep.neutralize import Neutralizer
    from normalized_faces.cli import collect_faces

    found, _ = collect_faces([(path, None) for path in paths], report=lambda line: None)
    found = [face for face in found if face.index == 0]  # the largest face, as data prep keeps it
    neutralizer = Neutralizer(FLAGS.neutralize_with, FLAGS.neutralize_strength)
    crops = np.stack([face.aligned.image for face in found])
    points = np.stack([face.aligned.landmarks for face in found])
    edits = np.stack([neutralizer(crop, landmarks) for crop, landmarks in zip(crops, points)])
    return [str(face.photo_path) for face in found], crops, edits, points


def examples_figure(run_dir: pathlib.Path, count: int = 8) -> pathlib.Path:
    """RUN/neutralized_examples.png: photos kept only because of the edit, each aligned as data prep
    aligns it | after the export's edit; `count` of them, evenly spread over how far the dropped
    measure was past its threshold (the nearest first)."""
    from PIL import Image

    from normalized_faces import visualize

    kept = kept_by_the_edit(run_dir)
    picks = [kept[i] for i in sorted(set(np.linspace(0, len(kept) - 1, count).astype(int)))] if kept else []
    paths, crops, edits, _ = aligned_and_edited([r["path"] for r in picks])
    by_path = {r["path"]: r for r in picks}
    labels = [f"{by_path[path]['reason']} {by_path[path]['value']:.2f}" for path in paths]
    path = run_dir / "neutralized_examples.png"
    rows = [list(pair) for pair in zip(crops, edits)]
    grid = visualize.image_grid(rows, labels=labels, column_titles=["dropped by the paper's filters", "kept, edited"])
    Image.fromarray(grid).save(path)
    return path


@lfw_result.stage("the kept photos judged by their look (FER2013 expression model)")
def judge_kept(run_dir: pathlib.Path, reference_count: int = 300):
    """Do the photos kept after an edit look neutral? FER2013's expression model (never trained with
    dlib's landmarks) on every photo kept only because of the edit, before and after it, next to
    `reference_count` photos the paper's filters accept (seeded sample). Per set: mean P(happy), and
    how many it calls happy / neutral (most probable emotion). RUN/neutralize_judge.json."""
    import csv

    from normalized_faces.cli import collect_faces
    from normalized_faces.expression_judge import ExpressionJudge, verdict

    path = run_dir / "neutralize_judge.json"
    if path.exists():
        return json.loads(path.read_text()), False
    judge = ExpressionJudge()

    _, crops, edits, points = aligned_and_edited([r["path"] for r in kept_by_the_edit(run_dir)])
    with (run_dir / "photos.csv").open() as file:
        every = [row["path"] for row in csv.DictReader(file)]
    dropped = rejected_by_name(run_dir, "plain")
    accepted = [p for p in every if pathlib.Path(p).name not in dropped]
    sample = [accepted[i] for i in np.random.default_rng(0).permutation(len(accepted))[:reference_count]]
    found, _ = collect_faces([(p, None) for p in sample], report=lambda line: None)
    found = [face for face in found if face.index == 0]
    reference = judge(np.stack([f.aligned.image for f in found]), np.stack([f.aligned.landmarks for f in found]))
    report = {
        "accepted_by_the_paper's_filters": verdict(reference),
        "kept_after_an_edit_unedited": verdict(judge(crops, points)),
        "kept_after_an_edit_edited": verdict(judge(edits, points)),
    }
    path.write_text(json.dumps(report, indent=2))
    return report, True


def judge_table(report: dict) -> str:
    lines = ["| photos | count | mean P(happy) | called happy | called neutral |", "|---|---|---|---|---|"]
    for name, row in report.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {row['photos']} | {row['mean']['happy']:.2f} | {row['called_happy']} "
            f"| {row['called_neutral']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    plain = prepare_plain(run_dir, people, split)
    neutralized = prepare_neutralized(run_dir, people, split)
    text = table(plain, neutralized) + "\n" + judge_table(judge_kept(run_dir))
    (run_dir / "neutralize_counts.md").write_text(text)
    print(text)
    print(f"wrote {examples_figure(run_dir)}")


if __name__ == "__main__":
    app.run(main)
