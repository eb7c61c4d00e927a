"""Short flow VAE runs that choose its settings on validation people (never the test people).

    python -m experiments.fvae_probe --run_dir=runs/fvae --probe=coherence_1 --coherence_weight=1 \
        [--coherence_alpha=10] [--reconstruction_region=face] [--max_pose_distance=3] [--landmark_weight=1] \
        [--fvae_train_steps=300] [--edit_directions=paired] [--noedit_relative] [--edit_strength=1]

Trains the flow model alone (no mask phase), with fvae_result's settings and flags (the loss
weights, --reconstruction_region, --max_pose_distance), on RUN/photo_data (fvae_result's data prep, run first
if missing) into RUN/probes/<probe>, then scores it on pairs of the validation people: PSNR of
g(S, Z(T)) against T and the flow's roughness, the mean distance in pixels between neighbouring
pixels' flows (a torn flow is rough; the paper's flows are smooth), how far from S's landmarks the
output samples where T shows its landmarks (the flow's geometry, whatever the lighting), and writes a grid of
source | output | flow | target, and a grid of validation photos edited towards each expression
(Algorithm 1); and whether those edits do what they are asked, with dlib finding the landmarks
again (edit_measure: towards neutral, what --neutralize_with would make of the photos data prep
drops; towards smile and open mouth from neutral photos; the head kept in place or not) and by
their look (edit_judge: FER2013's expression model, which never sees landmarks). The edits
follow --edit_directions and --edit_relative (rerun with others to add a variant: training is not
repeated). RUN/probes/summary.md lists every probe and editing variant so far.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import fvae_result, lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_string("probe", None, "The probe's name: its folder under RUN/probes.")
flags.DEFINE_integer("validation_pairs_per_person", 2, "Validation pairs per validation person.")
flags.mark_flag_as_required("probe")


def probe_config(run_dir: pathlib.Path):
    return fvae_result.train_config(run_dir, "flow").replace(
        model_dir=str(run_dir / "probes" / FLAGS.probe),
        fvae_mask_steps=0,
    )


def flow_roughness(flows) -> np.ndarray:
    """Mean distance in pixels between the flows of horizontally and vertically neighbouring pixels,
    per example: flows [N, H, W, 2] in normalized coordinates (1 = half the side)."""
    size = flows.shape[1]
    pixels = np.asarray(flows, np.float64) * (size - 1) / 2.0
    dx = np.linalg.norm(np.diff(pixels, axis=2), axis=-1).mean(axis=(1, 2))
    dy = np.linalg.norm(np.diff(pixels, axis=1), axis=-1).mean(axis=(1, 2))
    return (dx + dy) / 2.0


def flow_image(flows) -> np.ndarray:
    """Flows [N, H, W, 2] as colours (hue: direction, value: length up to 8 px): uint8 [N, H, W, 3]."""
    import cv2

    size = flows.shape[1]
    pixels = np.asarray(flows) * (size - 1) / 2.0
    angle = (np.degrees(np.arctan2(pixels[..., 1], pixels[..., 0])) % 360) / 2
    length = np.clip(np.linalg.norm(pixels, axis=-1) / 8.0, 0, 1) * 255
    hsv = np.stack([angle, np.full_like(angle, 255), length], -1).astype(np.uint8)
    return np.stack([cv2.cvtColor(h, cv2.COLOR_HSV2RGB) for h in hsv])


@lfw_result.stage("probe: evaluation on validation pairs")
def evaluate_probe(run_dir: pathlib.Path):
    from PIL import Image

    from normalized_faces import inference, visualize
    from normalized_faces.fvae import data as fvae_data

    probe_dir = run_dir / "probes" / FLAGS.probe
    report_path = probe_dir / "probe.json"
    if report_path.exists():
        return json.loads(report_path.read_text()), False
    model = inference.restore_training_model(probe_dir)
    photos = fvae_data.load_photos(run_dir / "photo_data", "validation")
    pairs = fvae_result.test_pairs(photos, FLAGS.validation_pairs_per_person)
    sources, targets = fvae_result.transferred_pairs(photos, pairs)
    outputs, flows = [], []
    for start in range(0, len(pairs), 32):
        batch = {
            k: fvae_data.to_model_range(v[start : start + 32]) for k, v in (("source", sources), ("target", targets))
        }
        out = model(batch)
        outputs.append(out["output"].numpy())
        flows.append(out["flow"].numpy())
    outputs, flows = np.concatenate(outputs), np.concatenate(flows)
    # g(T, Z(T)): each photo with itself, where Algorithm 1's edits start; ideally no flow at all.
    self_flows = np.concatenate(
        [
            model(fvae_data.to_model_range(targets[start : start + 32]))["flow"].numpy()
            for start in range(0, len(pairs), 32)
        ]
    )
    target_range = np.asarray(fvae_data.to_model_range(targets))
    source_range = np.asarray(fvae_data.to_model_range(sources))
    faces = np.stack([fvae_data.face_region(photos.landmarks[t], targets.shape[1]) for _, t in pairs])
    psnr = fvae_result.psnr(outputs, target_range)
    roughness = flow_roughness(flows)
    report = {
        "probe": FLAGS.probe,
        "coherence_weight": FLAGS.coherence_weight,
        "coherence_alpha": FLAGS.coherence_alpha,
        "kl_weight": FLAGS.kl_weight,
        "reconstruction_region": FLAGS.reconstruction_region,
        "max_pose_distance": FLAGS.max_pose_distance,
        "reconstruction_highpass": FLAGS.reconstruction_highpass,
        "landmark_weight": FLAGS.landmark_weight,
        "self_pairs": FLAGS.self_pairs,
        "steps": FLAGS.fvae_train_steps,
        "pairs": len(pairs),
        "psnr": float(psnr.mean()),
        "source_psnr": float(fvae_result.psnr(source_range, target_range).mean()),
        # On T's face alone (data.face_region), what the face-region probes are asked to reproduce.
        "face_psnr": float(fvae_result.psnr(outputs, target_range, faces).mean()),
        "source_face_psnr": float(fvae_result.psnr(source_range, target_range, faces).mean()),
        "flow_roughness_px": float(roughness.mean()),
        # Where the output shows T's landmarks, how far from S's landmarks it samples: the flow's
        # geometry, whatever the lighting (the identity flow: |t - s|).
        "landmark_error_px": float(fvae_result.landmark_error(flows, photos, pairs).mean()),
        "source_landmark_error_px": float(fvae_result.landmark_error(np.zeros_like(flows), photos, pairs).mean()),
        "self_flow_px": float(np.linalg.norm(self_flows, axis=-1).mean() * (targets.shape[1] - 1) / 2.0),
    }
    picks = np.linspace(0, len(pairs) - 1, 6).astype(int)
    colours = flow_image(flows[picks])
    rows = [[sources[i], fvae_result.to_uint8(outputs[i]), colours[k], targets[i]] for k, i in enumerate(picks)]
    Image.fromarray(visualize.image_grid(rows, column_titles=["source", "output", "flow", "target"])).save(
        probe_dir / "probe_grid.png"
    )
    report_path.write_text(json.dumps(report, indent=2))
    return report, True


@lfw_result.stage("probe: edits of validation photos")
def edit_probe(run_dir: pathlib.Path, per_label: int = 2):
    """RUN/probes/<probe>/probe_edits_<variant>.png: validation photos (per_label of each expression)
    edited by Algorithm 1 at full strength towards every label (the steps from training photos, as
    --edit_directions and --edit_relative say)."""
    from PIL import Image

    from normalized_faces import inference, visualize
    from normalized_faces.fvae import data as fvae_data
    from normalized_faces.fvae.editing import EDIT_TARGETS

    probe_dir = run_dir / "probes" / FLAGS.probe
    path = probe_dir / f"probe_edits_{fvae_result.editing_variant()}.png"
    if path.exists():
        return path, False
    editor = fvae_result.editor_for(probe_dir, inference.restore_training_model(probe_dir))
    photos = fvae_data.load_photos(run_dir / "photo_data", "validation")
    picks = np.concatenate([np.flatnonzero(photos.labels == label)[:per_label] for label in EDIT_TARGETS])
    rows = [[photos.images[i]] for i in picks]
    for label in EDIT_TARGETS:
        faces = editor.edit(photos.images[picks], photos.landmarks[picks], label, strength=FLAGS.edit_strength)
        faces = faces["faces"][-1]
        for row, face in zip(rows, faces):
            row.append(face)
    titles = ["photo"] + [f"to {label}" for label in EDIT_TARGETS]  # rows: per_label photos of each, in that order
    Image.fromarray(visualize.image_grid(rows, column_titles=titles)).save(path)
    return path, True


def expression_passes(points) -> bool:
    """Whether landmarks pass data prep's expression filters (its default smile and mouth thresholds)."""
    from data_prep import filters
    from normalized_faces import expressions

    thresholds = filters.FilterThresholds()
    return (
        expressions.smile(points) <= thresholds.max_smile
        and expressions.mouth_open(points) <= thresholds.max_mouth_open
    )


def reaches(points, to: str) -> bool:
    """Whether a face with these landmarks shows the expression an edit `to` was asked for: towards
    neutral, passing data prep's filters (what --neutralize_with needs); else that label."""
    from normalized_faces import expressions

    return expression_passes(points) if to == "neutral" else expressions.label(points) == to


def validation_records(run_dir: pathlib.Path) -> list:
    import tensorflow as tf

    from normalized_faces import data

    files = data.record_files(run_dir / "photo_data", "validation")
    return [data.decode_record(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def photos_to_edit(records, to: str, most: int) -> list:
    """The validation photos an edit towards `to` is measured on: towards neutral, those failing data
    prep's smile or open-mouth filter; towards smile or open mouth, the neutral ones; at most `most`."""
    from normalized_faces import expressions

    if to == "neutral":
        return [r for r in records if not expression_passes(r.landmarks)][:most]
    return [r for r in records if expressions.label(r.landmarks) == "neutral"][:most]


@lfw_result.stage("probe: validation photos edited, judged by their look (FER2013 expression model)")
def edit_judge(run_dir: pathlib.Path, batch_size: int = 16, most: int = 200):
    """Whether the edits change how the face looks, by a judge that ignores dlib's landmarks: FER2013's
    expression model (normalized_faces/expression_judge.py) on the photos edit_measure edits, before
    and after, cropped alike (the photo's landmarks). Per target: mean probabilities of its emotions and
    how many photos it calls happy (its most probable emotion). P(happy) is the judge's word on a
    smile: towards neutral it should fall to a neutral face's, towards smile rise.
    RUN/probes/<probe>/probe_edit_judge_<variant>.json, one entry per target, and the neutral
    validation photos' own figures for reference."""
    from normalized_faces import inference
    from normalized_faces.expression_judge import ExpressionJudge, verdict
    from normalized_faces.fvae.editing import EDIT_TARGETS

    probe_dir = run_dir / "probes" / FLAGS.probe
    path = probe_dir / f"probe_edit_judge_{fvae_result.editing_variant()}.json"
    if path.exists():
        return json.loads(path.read_text()), False
    editor = fvae_result.editor_for(probe_dir, inference.restore_training_model(probe_dir))
    judge = ExpressionJudge()
    records = validation_records(run_dir)

    # The reference: the neutral validation photos as judge_calibration judged them (not judged again).
    report = {"neutral_photos": judge_calibration(run_dir)["neutral"]}
    for to in EDIT_TARGETS:
        chosen = photos_to_edit(records, to, most)
        faces = np.stack([r.image for r in chosen])
        points = np.stack([r.landmarks for r in chosen])
        edited = np.concatenate(
            [
                editor.edit(faces[i : i + batch_size], points[i : i + batch_size], to, strength=FLAGS.edit_strength)[
                    "faces"
                ][-1]
                for i in range(0, len(chosen), batch_size)
            ]
        )
        report[to] = {
            "photos": len(chosen),
            "unedited": verdict(judge(faces, points)),
            "edited": verdict(judge(edited, points)),
        }
    path.write_text(json.dumps(report, indent=2))
    return report, True


@lfw_result.stage("the expression judge on unedited validation photos, by dlib's label")
def judge_calibration(run_dir: pathlib.Path):
    """How FER2013's expression model sees validation photos dlib labels neutral, smile, open mouth:
    mean P(happy) and photos called happy per label, and how well P(happy) tells smiles (and open
    mouths) from neutral faces (AUC: the chance a random such photo scores above a random neutral
    one). RUN/probes/judge_calibration.json (no model involved)."""
    from scipy.stats import mannwhitneyu

    from normalized_faces import expressions
    from normalized_faces.expression_judge import EMOTIONS, ExpressionJudge, verdict

    path = run_dir / "probes" / "judge_calibration.json"
    if path.exists():
        return json.loads(path.read_text()), False
    records = validation_records(run_dir)
    probabilities = ExpressionJudge()(np.stack([r.image for r in records]), np.stack([r.landmarks for r in records]))
    happy = probabilities[:, EMOTIONS.index("happy")]
    labels = np.array([expressions.label(r.landmarks) for r in records])
    report = {label: verdict(probabilities[labels == label]) for label in expressions.LABELS}
    for label in ("smile", "open_mouth"):
        u = mannwhitneyu(happy[labels == label], happy[labels == "neutral"]).statistic
        report[f"auc_{label}_vs_neutral"] = float(u / ((labels == label).sum() * (labels == "neutral").sum()))
    path.write_text(json.dumps(report, indent=2))
    return report, True


def variant_results(run_dir: pathlib.Path, kind: str):
    """(probe, editing variant, results) of every RUN/probes/<probe>/probe_<kind>_<variant>.json, by name."""
    for path in sorted((run_dir / "probes").glob(f"*/probe_{kind}_*.json")):
        variant = path.stem[len(f"probe_{kind}_") :].replace("label_means", "label-means").replace("_", " ")
        yield path.parent.name, variant, json.loads(path.read_text())


def variant_table(run_dir: pathlib.Path, kind: str, target_title: str, last_title: str, target_cell, last_cell) -> str:
    """One row per probe and editing variant of `kind` results: a cell per edit target, and a last one."""
    from normalized_faces.fvae.editing import EDIT_TARGETS

    lines = [
        "| probe | edit steps, flow | "
        + " | ".join(f"to {to}: {target_title}" for to in EDIT_TARGETS)
        + f" | {last_title} |",
        "|---|---|" + "---|" * len(EDIT_TARGETS) + "---|",
    ]
    for probe, variant, r in variant_results(run_dir, kind):
        cells = [target_cell(r[to]) for to in EDIT_TARGETS]
        lines.append(f"| {probe} | {variant} | " + " | ".join(cells) + f" | {last_cell(r)} |")
    return "\n".join(lines) + "\n"


def judge_summary(run_dir: pathlib.Path) -> str:
    """Every probe's edit_judge so far, one row per editing variant."""

    def target_cell(m):
        before, after = m["unedited"], m["edited"]
        return (
            f"{before['mean']['happy']:.2f} -> {after['mean']['happy']:.2f}, "
            f"{before['called_happy']} -> {after['called_happy']} / {m['photos']}"
        )

    def reference(r):
        neutral = r["neutral_photos"]
        return f"{neutral['mean']['happy']:.2f}, {neutral['called_happy']} / {neutral['photos']}"

    return variant_table(
        run_dir,
        "edit_judge",
        "P(happy) unedited -> edited, called happy",
        "neutral photos: P(happy), called happy",
        target_cell,
        reference,
    )


@lfw_result.stage("probe: validation photos edited, landmarks found again")
def edit_measure(run_dir: pathlib.Path, batch_size: int = 16, most: int = 200):
    """Whether the edits do what they are asked, measured with dlib: validation photos are edited
    (Algorithm 1, full strength, on their 224 px crops) towards each label, dlib finds their landmarks
    again, and we count those that now show it (towards neutral: pass data prep's smile and open-mouth
    filters, what --neutralize_with needs; towards smile or open mouth: that label), next to the same
    photos unedited with landmarks found the same way (what detection noise alone gives), and how
    many of those kept the head where it was (data prep's --neutralize_max_head_shift; head shifts as
    percentiles). The photos: towards neutral, every one failing data prep's filters; towards smile
    or open mouth, the neutral ones (at most `most` of each).
    RUN/probes/<probe>/probe_edit_measure_<variant>.json, one entry per target."""
    from data_prep import stages
    from normalized_faces import detection, inference
    from normalized_faces.fvae.editing import EDIT_TARGETS
    from normalized_faces.landmarks import pose_distance

    probe_dir = run_dir / "probes" / FLAGS.probe
    path = probe_dir / f"probe_edit_measure_{fvae_result.editing_variant()}.json"
    if path.exists():
        return json.loads(path.read_text()), False
    editor = fvae_result.editor_for(probe_dir, inference.restore_training_model(probe_dir))
    records = validation_records(run_dir)
    detector = detection.FaceDetector("hog")
    max_shift = stages.PrepConfig().neutralize_max_head_shift
    report = {"max_head_shift_px": max_shift}
    for to in EDIT_TARGETS:
        chosen = photos_to_edit(records, to, most)
        counts = {"photos": len(chosen), "edited_reached": 0, "unedited_reached": 0, "edited_no_face": 0}
        counts["edited_reached_head_kept"] = 0
        shifts = {"edited": [], "unedited": []}
        for start in range(0, len(chosen), batch_size):
            chunk = chosen[start : start + batch_size]
            faces = np.stack([r.image for r in chunk])
            points = np.stack([r.landmarks for r in chunk])
            edited = editor.edit(faces, points, to, strength=FLAGS.edit_strength)["faces"][-1]
            for record, before, after in zip(chunk, faces, edited):
                found_before, found_after = detector(before), detector(after)
                counts["unedited_reached"] += bool(found_before) and reaches(found_before[0].landmarks, to)
                counts["edited_no_face"] += not found_after
                # How far the head-bound landmarks found again lie from the record's (data prep's guard):
                # unedited, dlib's noise alone; edited, that and what the edit moved.
                for kind, found in (("unedited", found_before), ("edited", found_after)):
                    if found:
                        shifts[kind].append(pose_distance(np.asarray(record.landmarks), np.asarray(found[0].landmarks)))
                if found_after and reaches(found_after[0].landmarks, to):
                    counts["edited_reached"] += 1
                    counts["edited_reached_head_kept"] += shifts["edited"][-1] <= max_shift
        report[to] = {
            **counts,
            **{
                f"{kind}_head_shift_px": {q: float(np.percentile(v, int(q[1:]))) for q in ("p50", "p90", "p99")}
                for kind, v in shifts.items()
                if v
            },
            "head_shifts_px": shifts,  # every photo's, to count at another threshold
        }
    path.write_text(json.dumps(report, indent=2))
    return report, True


def edit_summary(run_dir: pathlib.Path) -> str:
    """Every probe's edit measures so far, one row per editing variant."""

    def target_cell(m):
        return f"{m['edited_reached']}, {m['edited_reached_head_kept']} ({m['unedited_reached']}) / {m['photos']}"

    def head_shift(r):
        neutral = r["neutral"]
        if "edited_head_shift_px" in neutral and "unedited_head_shift_px" in neutral:
            return f"{neutral['edited_head_shift_px']['p50']:.1f} ({neutral['unedited_head_shift_px']['p50']:.1f})"
        return ""

    return variant_table(
        run_dir,
        "edit_measure",
        "reached, head kept (unedited) / photos",
        "head shift p50 edited (unedited) px",
        target_cell,
        head_shift,
    )


def pair_statistics(run_dir: pathlib.Path) -> str:
    """How alike in pose the train split's pairs are: the median pose distance over every pair of
    one person's photos, and how many pairs --max_pose_distance keeps."""
    from normalized_faces.fvae import data as fvae_data
    from normalized_faces.landmarks import pose_distance

    photos = fvae_data.load_photos(run_dir / "photo_data", "train")
    distances = [
        pose_distance(photos.landmarks[a], photos.landmarks[b])
        for pairs in fvae_data.person_pairs(photos).values()
        for a, b in pairs
    ]
    kept = sum(d <= FLAGS.max_pose_distance for d in distances)
    return (
        f"train pairs: {len(distances)}, median pose distance {np.median(distances):.2f} px at 128 px; "
        f"{kept} ({kept / len(distances):.0%}) within --max_pose_distance={FLAGS.max_pose_distance:g}"
    )


def summary(run_dir: pathlib.Path) -> str:
    lines = [
        "| probe | steps | lambda2 | alpha | lambda1 | region | max pose (px) | validation PSNR | source PSNR "
        "| face PSNR | source face PSNR | flow roughness (px) | landmark error px (S) | self flow px |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted((run_dir / "probes").glob("*/probe.json")):
        r = json.loads(path.read_text())
        region = r.get("reconstruction_region", "image")
        if r.get("reconstruction_highpass"):
            region += f", high-pass {r['reconstruction_highpass']:g} px"
        if r.get("landmark_weight"):
            region += f", landmarks x{r['landmark_weight']:g}"
        if r.get("self_pairs"):
            region += f", {r['self_pairs']:.0%} self-pairs"
        face = "" if "face_psnr" not in r else f"{r['face_psnr']:.2f} | {r['source_face_psnr']:.2f}"
        landmarks = ""
        if "landmark_error_px" in r:
            landmarks = f"{r['landmark_error_px']:.2f} ({r['source_landmark_error_px']:.2f})"
        self_flow = f"{r['self_flow_px']:.2f}" if "self_flow_px" in r else ""
        lines.append(
            f"| {r['probe']} | {r['steps']} | {r['coherence_weight']:g} | {r['coherence_alpha']:g} | "
            f"{r['kl_weight']:g} | {region} | {r.get('max_pose_distance', float('inf')):g} | "
            f"{r['psnr']:.2f} | {r['source_psnr']:.2f} | {face or ' | '} | {r['flow_roughness_px']:.3f} | "
            f"{landmarks} | {self_flow} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    fvae_result.prepare_training_photos(run_dir, people, split)
    lfw_result.make_training_stage(FLAGS.probe, f"probe {FLAGS.probe}", lambda r, _: probe_config(r))(run_dir)
    evaluate_probe(run_dir)
    edit_probe(run_dir)
    edit_measure(run_dir)
    calibration = judge_calibration(run_dir)
    edit_judge(run_dir)
    text = summary(run_dir) + "\n" + edit_summary(run_dir) + "\n" + judge_summary(run_dir)
    text += "\nThe judge on unedited validation photos by dlib's label: " + json.dumps(calibration) + "\n"
    (run_dir / "probes" / "summary.md").write_text(text)
    print(text)
    print(pair_statistics(run_dir))
    if FLAGS.figures_dir:  # the probe's two grids, quantized, as docs/results/fvae_probe_<probe>[_edits].png
        probe_dir = run_dir / "probes" / FLAGS.probe
        figures_dir = pathlib.Path(FLAGS.figures_dir)
        fvae_result.save_small_figure(
            probe_dir / "probe_grid.png", figures_dir / f"fvae_probe_{FLAGS.probe}.png", False
        )
        variant = fvae_result.editing_variant()
        edits = figures_dir / f"fvae_probe_{FLAGS.probe}_edits_{variant}.png"
        fvae_result.save_small_figure(probe_dir / f"probe_edits_{variant}.png", edits, False)


if __name__ == "__main__":
    app.run(main)
