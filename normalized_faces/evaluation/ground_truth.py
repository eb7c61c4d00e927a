"""Normalized faces against ground truth: the real frontal neutral photo of the same person.

    python -m normalized_faces.evaluation.ground_truth --pairs=../shared/faces/london \
        --people=experiments/london_test_people.txt --groups=../shared/faces/london/info.csv \
        --output_dir=OUT [--model=EXPORT_OR_RUN]

Pairs come as a folder `<root>/<person>/<person><input_suffix>.jpg` + `<person><truth_suffix>.jpg`
(default `_smiling` and `_neutral`: the FRL London Set's layout) or a CSV manifest with columns
person, input, truth. Both photos are aligned as data prep aligns; the input is normalized, and
its normalized face is compared with the truth photo, aligned the same way:

  landmarks      dlib's 68 points found on the normalized face vs the truth's, mean distance / the
                 truth's interocular distance (and the model's own predicted landmarks, the same way);
  ssim           SSIM of the face region (the truth's landmark hull), grey;
  perceptual     a deep-feature distance on early layers of dlib's face network (PerceptualDistance);
  sharpness      Laplacian variance of the face region, normalized face / truth (the truth is 1);
  colour         CIE76 delta E between the mean L*a*b* of the skin (face less eyes, brows, mouth);
  identity       rank-1 of each normalized face against a gallery of every person's truth photo,
                 by dlib's network and by FaceNet;
  invariance     judge distance between the normalized faces of the input and of the truth photo
                 (a normalization ignores the expression: 0 is perfect).

Beside the model, the same figures for two references: `mean_face` (the training data's mean face
in place of every normalized face: the baseline) and `input` (the aligned input photo itself:
what no normalization at all scores). Colour and identity are also given per group of the
`--groups` CSV's columns (e.g. gender, ethnicity). Writes OUT/report.json and OUT/grid.png
(input | normalized | truth, a row per person, up to --grid_people). Exit codes: 0 all pairs
evaluated, 1 some failed (a line each), 2 nothing evaluated.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
REFERENCES = ("mean_face", "input")


def define_flags():
    flags.DEFINE_string("model", None, "Exported SavedModel or training model_dir; default: the shipped model.")
    flags.DEFINE_string(
        "pairs", None, "Folder <root>/<person>/<person>{_smiling,_neutral}.jpg, or a CSV person,input,truth."
    )
    flags.DEFINE_string("input_suffix", "_smiling", "With a folder: the input photo's name after the person's id.")
    flags.DEFINE_string(
        "truth_suffix", "_neutral", "With a folder: the ground-truth photo's name after the person's id."
    )
    flags.DEFINE_string("people", None, "Optional file of person ids (whitespace separated): only these are evaluated.")
    flags.DEFINE_string(
        "groups", None, "Optional CSV: a person id column (first) and group columns, e.g. London's info.csv."
    )
    flags.DEFINE_list("judges", ["dlib_resnet", "facenet"], "Recognizers for the identity figures.")
    flags.DEFINE_string("output_dir", None, "Where report.json and grid.png go.")
    flags.DEFINE_integer("grid_people", 12, "People in grid.png.")


def pairs_from(path, input_suffix="_smiling", truth_suffix="_neutral", people=None) -> list:
    """[(person, input path, truth path)] from a folder or a CSV manifest, restricted to `people`."""
    path = pathlib.Path(path)
    if path.is_dir():
        pairs = []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            found = {}
            for suffix in (input_suffix, truth_suffix):
                matches = sorted(folder.glob(f"{folder.name}{suffix}.*"))
                if matches:
                    found[suffix] = matches[0]
            if len(found) == 2:
                pairs.append((folder.name, str(found[input_suffix]), str(found[truth_suffix])))
    else:
        with path.open(newline="") as file:
            pairs = [(row["person"], row["input"], row["truth"]) for row in csv.DictReader(file)]
    if people is not None:
        wanted = set(people)
        pairs = [pair for pair in pairs if pair[0] in wanted]
    if not pairs:
        raise ValueError(f"{path}: no (input, truth) pairs found")
    return pairs


def read_groups(path) -> dict:
    """{person: {column: value}} from a CSV whose first column is the person id."""
    with pathlib.Path(path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    key = next(iter(rows[0]))
    return {row[key]: {k: v for k, v in row.items() if k != key} for row in rows}


# Early layers of dlib's face network (never a training loss of the paper's model): what the
# perceptual distance compares, as LPIPS does with its networks' layers, without learned weights.
PERCEPTUAL_LAYERS = ("stem_relu", "stage0_block2_relu2", "stage1_block1_relu2")


class PerceptualDistance:
    """Deep-feature distance of two face sets: per layer of PERCEPTUAL_LAYERS, features unit-normalized
    over channels at every position, squared difference, mean over positions; mean over layers.
    0 for identical faces; unitless (about 0.1-0.3 between different people's aligned photos)."""

    def __init__(self, image_size=224):
        import keras

        from normalized_faces.encoders import get_encoder

        self.encoder = get_encoder("dlib_resnet", aligned_size=image_size)
        network = self.encoder.network
        self.features = keras.Model(network.inputs, [network.get_layer(name).output for name in PERCEPTUAL_LAYERS])

    def _features(self, images):
        chips = self.encoder.to_chips(np.asarray(images, np.float32) / 255.0)
        return [f.numpy() / (np.linalg.norm(f.numpy(), axis=-1, keepdims=True) + 1e-10) for f in self.features(chips)]

    def __call__(self, a, b) -> np.ndarray:
        """a, b: [N, S, S, 3] uint8 aligned faces -> [N] distances."""
        pairs = zip(self._features(a), self._features(b))
        return np.mean([np.square(fa - fb).sum(-1).mean(axis=(1, 2)) for fa, fb in pairs], axis=0)


def interocular(landmarks) -> float:
    from normalized_faces import landmarks as lm

    right, left = lm.eye_centers(np.asarray(landmarks))
    return float(np.linalg.norm(left - right))


def image_figures(face, truth_image, truth_landmarks, detector) -> dict:
    """Landmark error, SSIM, sharpness ratio and colour of one face ([S, S, 3] uint8) against its truth."""
    from normalized_faces.evaluation import measures

    size = truth_image.shape[0]
    face_region = measures.face_mask(truth_landmarks, size)
    skin = measures.skin_mask(truth_landmarks, size)
    found = detector(face)
    landmark_error = (
        float(np.mean(np.linalg.norm(found[0].landmarks - truth_landmarks, axis=1)) / interocular(truth_landmarks))
        if found
        else None
    )
    return {
        "landmark_error": landmark_error,
        "ssim": measures.ssim(face, truth_image, face_region),
        "sharpness_ratio": measures.sharpness(face, face_region)
        / max(measures.sharpness(truth_image, face_region), 1e-12),
        "delta_e": measures.delta_e(measures.mean_lab(face, skin), measures.mean_lab(truth_image, skin)),
        "lab": measures.mean_lab(face, skin).round(2).tolist(),
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(rows: list, key: str) -> dict:
    return {
        name: _mean([row[key][name] for row in rows])
        for name in ("landmark_error", "ssim", "perceptual", "sharpness_ratio", "delta_e")
    }


def evaluate_pairs(
    model_path, pairs, output_dir, groups=None, judges=("dlib_resnet", "facenet"), grid_people=12, report=print
):
    """Every figure of the module docstring; returns the report (also OUT/report.json)."""
    from normalized_faces import evaluate, inference, visualize
    from normalized_faces.batch import collect_faces, prepare_output_dir, write_bytes_atomically
    from normalized_faces.cli import normalize
    from normalized_faces.detection import FaceDetector
    from normalized_faces.evaluation import measures

    output_dir = prepare_output_dir(output_dir)
    model = inference.load_model(model_path)
    inputs, failed_inputs = collect_faces([(p[1], None) for p in pairs], report=report)
    truths, failed_truths = collect_faces([(p[2], None) for p in pairs], report=report)
    inputs = {str(f.photo_path): f for f in inputs if f.index == 0}
    truths = {str(f.photo_path): f for f in truths if f.index == 0}
    kept = [p for p in pairs if p[1] in inputs and p[2] in truths]
    if not kept:
        raise ValueError("no pair gave a face in both photos")
    people = [p[0] for p in kept]
    input_images = np.stack([inputs[p[1]].aligned.image for p in kept])
    truth_images = np.stack([truths[p[2]].aligned.image for p in kept])
    truth_landmarks = np.stack([truths[p[2]].aligned.landmarks for p in kept])
    outputs = normalize(model, [inputs[p[1]] for p in kept])
    normalized = np.stack([o["normalized_face"] for o in outputs])
    normalized_truths = np.stack([o["normalized_face"] for o in normalize(model, [truths[p[2]] for p in kept])])
    detector = FaceDetector("auto")
    candidates = {"model": normalized, "input": input_images}
    if model.mean_face is not None:
        candidates["mean_face"] = np.repeat(model.mean_face[None], len(kept), axis=0)
    perceptual = PerceptualDistance(model.image_size)
    distances = {name: perceptual(faces, truth_images) for name, faces in candidates.items()}
    rows = []
    for i, person in enumerate(people):
        row = {"person": person, "input": kept[i][1], "truth": kept[i][2]}
        for name, faces in candidates.items():
            row[name] = image_figures(faces[i], truth_images[i], truth_landmarks[i], detector)
            row[name]["perceptual"] = float(distances[name][i])
        predicted = outputs[i]["landmarks"]
        row["model"]["predicted_landmark_error"] = float(
            np.mean(np.linalg.norm(predicted - truth_landmarks[i], axis=1)) / interocular(truth_landmarks[i])
        )
        rows.append(row)
    identity = {}
    for name, encoder in evaluate.load_judges(list(judges), model.image_size, report).items():
        threshold = encoder.threshold
        gallery = evaluate._judge_vectors(encoder, truth_images)
        figures, vectors = {}, {}
        for candidate, faces in candidates.items():
            vectors[candidate] = evaluate._judge_vectors(encoder, faces)
            distances = threshold.distances(vectors[candidate][:, None], gallery[None])  # [N, N]: face i vs truth j
            own = np.diagonal(distances)
            figures[candidate] = {
                **evaluate.rank_accuracy(vectors[candidate], people, gallery, people, threshold),
                "genuine": float(np.mean(own < threshold.value)),
            }
            for i, row in enumerate(rows):
                row[candidate][f"{name}_distance"] = float(own[i])
                row[candidate][f"{name}_rank1"] = bool(np.argmin(distances[i]) == i)
        invariance = threshold.distances(vectors["model"], evaluate._judge_vectors(encoder, normalized_truths))
        figures["model"]["invariance_distance"] = float(np.mean(invariance))
        figures["threshold"] = threshold.value
        identity[name] = figures
    by_group = {}
    for column in sorted({c for g in (groups or {}).values() for c in g} - {"face_age"}):
        for value in sorted({(groups.get(p) or {}).get(column) for p in people} - {None}):
            members = [row for row in rows if (groups.get(row["person"]) or {}).get(column) == value]
            by_group[f"{column}={value}"] = {
                "people": len(members),
                "delta_e": _mean([row["model"]["delta_e"] for row in members]),
                **{
                    f"{name}_rank1": _mean([float(row["model"][f"{name}_rank1"]) for row in members])
                    for name in identity
                },
            }
    summary = {
        "model": model.source,
        "pairs": len(pairs),
        "evaluated": len(kept),
        "failed": sorted(set(failed_inputs) | set(failed_truths)),
        "figures": {name: summarize(rows, name) for name in candidates},
        "predicted_landmark_error": _mean([row["model"]["predicted_landmark_error"] for row in rows]),
        "shared_pattern": {
            name: measures.shared_pattern(faces, mask=measures.face_mask(truth_landmarks.mean(0), faces.shape[1]))
            for name, faces in (("model", normalized), ("truth", truth_images), ("input", input_images))
        },
        "identity": identity,
        "by_group": by_group,
        "per_person": rows,
    }
    write_bytes_atomically(output_dir / "report.json", json.dumps(summary, indent=2).encode())
    shown = np.linspace(0, len(kept) - 1, min(grid_people, len(kept))).astype(int)
    grid = visualize.image_grid(
        [[input_images[i], normalized[i], truth_images[i]] for i in shown],
        labels=[people[i] for i in shown],
        column_titles=["input (aligned)", "normalized", "truth (aligned)"],
    )
    visualize.write_png(output_dir / "grid.png", grid)
    for line in summary_lines(summary):
        report(line)
    report(f"wrote {output_dir / 'report.json'} and grid.png")
    return summary


def _fmt(value, pattern="{:.3f}"):
    return "n/a" if value is None else pattern.format(value)


def summary_lines(summary: dict) -> list:
    lines = [f"{summary['evaluated']} of {summary['pairs']} pairs evaluated; model {summary['model']}"]
    lines.append("                  landmarks/IOD   SSIM  perceptual  sharpness   delta E")
    for name, figures in summary["figures"].items():
        lines.append(
            f"  {name:<14} {_fmt(figures['landmark_error'], '{:.3%}'):>14} {_fmt(figures['ssim']):>6} "
            f"{_fmt(figures['perceptual']):>11}"
            f"{_fmt(figures['sharpness_ratio']):>11} {_fmt(figures['delta_e'], '{:.1f}'):>9}"
        )
    lines.append(f"  model's own landmarks: {_fmt(summary['predicted_landmark_error'], '{:.3%}')} of IOD")
    for judge, figures in summary["identity"].items():
        lines.append(
            f"  identity by {judge}: rank-1 "
            + ", ".join(f"{k} {_fmt(v['rank1'], '{:.1%}')}" for k, v in figures.items() if k != "threshold")
            + f"; invariance (smiling vs neutral normalized) {_fmt(figures['model']['invariance_distance'])}"
        )
    lines.append("  shared pattern: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["shared_pattern"].items()))
    for group, figures in summary["by_group"].items():
        lines.append(
            f"  {group:<28} {figures['people']:>3} people  delta E {_fmt(figures['delta_e'], '{:.1f}')}  "
            + "  ".join(f"{k} {_fmt(v, '{:.0%}')}" for k, v in figures.items() if k.endswith("rank1"))
        )
    return lines


def run(
    model_path,
    pairs_path,
    output_dir,
    people_path=None,
    groups_path=None,
    judges=("dlib_resnet", "facenet"),
    input_suffix="_smiling",
    truth_suffix="_neutral",
    grid_people=12,
    report=print,
) -> int:
    from normalized_faces.batch import OutputDirError
    from normalized_faces.inference import ModelLoadError

    try:
        people = pathlib.Path(people_path).read_text().split() if people_path else None
        pairs = pairs_from(pairs_path, input_suffix, truth_suffix, people)
        groups = read_groups(groups_path) if groups_path else None
        summary = evaluate_pairs(model_path, pairs, output_dir, groups, judges, grid_people, report)
    except (OSError, ValueError, OutputDirError, ModelLoadError) as error:
        report(f"nothing evaluated: {error}")
        return 2
    return 1 if summary["failed"] else 0


def main(argv):
    del argv
    if not FLAGS.pairs or not FLAGS.output_dir:
        raise app.UsageError("--pairs and --output_dir are required")
    sys.exit(
        run(
            FLAGS.model,
            FLAGS.pairs,
            FLAGS.output_dir,
            FLAGS.people,
            FLAGS.groups,
            FLAGS.judges,
            FLAGS.input_suffix,
            FLAGS.truth_suffix,
            FLAGS.grid_people,
        )
    )


if __name__ == "__main__":
    define_flags()
    from normalized_faces.config_flags import run_command

    run_command(main)
