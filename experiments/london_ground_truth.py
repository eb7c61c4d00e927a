"""A model's normalized faces of the London test people against their real neutral photos.

    python -m experiments.london_ground_truth [--model=EXPORT_OR_RUN] --name=shipped \
        [--london=../shared/faces/london] [--run_dir=runs/london_ground_truth] [--results_dir=docs/results/ground_truth]

Runs normalized_faces.evaluation.ground_truth on the committed London test people
(experiments/london_test_people.txt: never trained on, never tuned on): each person's smiling
photo normalized and compared with their neutral photo. Writes RESULTS/<name>.json (the summary,
per-person figures included), RESULTS/<name>.md (the tables) and RESULTS/<name>_grid.png (6 test
people: smiling photo | normalized | real neutral photo, half size). The London photos are
CC BY 4.0 (DeBruine & Jones 2017, Face Research Lab London Set, doi:10.6084/m9.figshare.5047666.v5):
the figure carries that attribution in its page.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import london_split  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
ATTRIBUTION = (
    "Photos: Face Research Lab London Set, DeBruine, L. & Jones, B. (2017), "
    "doi:10.6084/m9.figshare.5047666.v5, CC BY 4.0 (scaled, aligned)."
)
FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Exported SavedModel or run folder; default: the shipped model.")
flags.DEFINE_string("name", "shipped", "Name of this model's results (file names under --results_dir).")
flags.DEFINE_string("london", str(london_split.DEFAULT_ROOT), "The FRL London Set folder.")
flags.DEFINE_string("run_dir", str(REPO / "runs" / "london_ground_truth"), "Full-size outputs (report.json, grid.png).")
flags.DEFINE_string("results_dir", str(REPO / "docs" / "results" / "ground_truth"), "The small committed results.")


def markdown(name: str, summary: dict, command: str) -> str:
    rows = [
        f"# Ground truth: {name}",
        "",
        f"Model: `{summary['model']}`. {summary['evaluated']} London test people (smiling photo -> normalized face, "
        "against the person's real neutral photo, both aligned as data prep aligns). Command: "
        f"`{command}` (2-core x86 CPU, float32).",
        "",
        "| face compared with the truth | landmarks / IOD | face SSIM | perceptual distance | sharpness ratio | "
        "skin delta E (CIE76) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"model": "normalized face", "mean_face": "mean face (baseline)", "input": "smiling photo itself"}
    for key, figures in summary["figures"].items():
        rows.append(
            f"| {labels.get(key, key)} | {100 * (figures['landmark_error'] or float('nan')):.1f}% | {figures['ssim']:.3f} | "
            f"{figures['perceptual']:.3f} | "
            f"{figures['sharpness_ratio']:.3f} | {figures['delta_e']:.1f} |"
        )
    rows += [
        "",
        "| judge | normalized rank-1 | mean face | smiling photo | invariance (distance) |",
        "|---|---|---|---|---|",
    ]
    for judge, figures in summary["identity"].items():
        rows.append(
            f"| {judge} | {100 * figures['model']['rank1']:.1f}% | {100 * figures.get('mean_face', {}).get('rank1', float('nan')):.1f}% | "
            f"{100 * figures['input']['rank1']:.1f}% | {figures['model']['invariance_distance']:.3f} (threshold {figures['threshold']:g}) |"
        )
    pattern = summary["shared_pattern"]
    rows += [
        "",
        f"Shared pattern (RMS of the mean high-pass over the set / mean RMS of each; face region): normalized "
        f"{pattern['model']:.3f}, real neutral photos {pattern['truth']:.3f}, smiling photos {pattern['input']:.3f}.",
        "",
        "| group | people | skin delta E | " + " | ".join(f"{j} rank-1" for j in summary["identity"]) + " |",
        "|---|---|---|" + "---|" * len(summary["identity"]),
    ]
    for group, figures in summary["by_group"].items():
        rows.append(
            f"| {group} | {figures['people']} | {figures['delta_e']:.1f} | "
            + " | ".join(f"{100 * figures[f'{j}_rank1']:.0f}%" for j in summary["identity"])
            + " |"
        )
    rows += ["", f"![smiling | normalized | neutral]({name}_grid.png)", "", ATTRIBUTION, ""]
    return "\n".join(rows)


def main(argv):
    del argv
    import cv2
    from PIL import Image

    from normalized_faces.evaluation import ground_truth

    _, split = london_split.load_split(FLAGS.london)
    run_dir = pathlib.Path(FLAGS.run_dir) / FLAGS.name
    results = pathlib.Path(FLAGS.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    pairs = ground_truth.pairs_from(FLAGS.london, people=split["test"])
    groups = ground_truth.read_groups(pathlib.Path(FLAGS.london) / "info.csv")
    summary = ground_truth.evaluate_pairs(FLAGS.model, pairs, run_dir, groups, grid_people=6)
    (results / f"{FLAGS.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    grid = np.asarray(Image.open(run_dir / "grid.png").convert("RGB"))
    small = cv2.resize(grid, (grid.shape[1] // 2, grid.shape[0] // 2), interpolation=cv2.INTER_AREA)
    Image.fromarray(small).quantize(256, dither=Image.Dither.NONE).save(
        results / f"{FLAGS.name}_grid.png", optimize=True
    )
    command = (
        "python -m experiments.london_ground_truth"
        + (f" --model={FLAGS.model}" if FLAGS.model else "")
        + f" --name={FLAGS.name}"
    )
    (results / f"{FLAGS.name}.md").write_text(markdown(FLAGS.name, summary, command))
    print((results / f"{FLAGS.name}.md").read_text())


if __name__ == "__main__":
    app.run(main)
