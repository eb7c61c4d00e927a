"""The flow VAE (Yeh et al.) on LFW in one resumable command: the paper's Table 1 and Figs. 4 and 7.

    python -m experiments.fvae_result --run_dir=runs/fvae [--fvae_train_steps=600] [--figures_dir=docs/results]

Stages (each skipped when its output exists; RUN/times.json keeps their wall-clock times):
1. data prep, photos mode with the expression filters opened (--max_smile=inf --max_mouth_open=inf),
   of the train + validation people of the fixed split -> RUN/photo_data; and of the test people
   -> RUN/test_photo_data (never trained on, nothing tuned on it);
2. training at the CPU recipe (--base_channels, --batch_size): the flow VAE -> RUN/flow and the
   same network predicting pixels, the paper's VAE baseline -> RUN/rgb;
3. evaluation on pairs of test people's photos (--pairs_per_person, seed 0; S colour-transferred
   to T as in training): PSNR of g(S, Z(T)) against T for both, and for the paper's flow baseline,
   the mean of the flow model's flows over training pairs applied to S; RUN/fvae_results.md;
4. figures: source | flow VAE | VAE | mean flow | target (Fig. 4); flow upsampling against pixel
   upsampling at 224 px (Fig. 7); test photos edited towards neutral and smile (Algorithm 1, with
   --edit_directions, --edit_relative and --edit_strength: RUN/fvae_edits_<variant>.png).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
from absl import app, flags

from experiments import lfw_result

FLAGS = flags.FLAGS
flags.DEFINE_integer("base_channels", 8, "Channels at 128 px, doubling per halving (paper: 32, a 4x4x1024 latent).")
flags.DEFINE_integer("fvae_batch_size", 32, "Batch size (paper: 64).")
flags.DEFINE_integer("fvae_train_steps", 600, "Steps of each model (the last quarter train the flow model's mask).")
flags.DEFINE_float("coherence_weight", 0.001, "lambda2, the flow coherence's weight (paper: 0.001; see the README).")
flags.DEFINE_float("coherence_alpha", 10.0, "alpha of the coherence's colour term (not in the paper).")
flags.DEFINE_float("kl_weight", 0.003, "lambda1, the KL term's weight (paper: 0.003).")
flags.DEFINE_enum(
    "reconstruction_region", "image", ["image", "face"], "Where T's L2 counts (--fvae_reconstruction_region)."
)
flags.DEFINE_float(
    "reconstruction_highpass", 0.0, "sigma (px) of the L2's high-pass (--fvae_reconstruction_highpass; 0: off)."
)
flags.DEFINE_float(
    "max_pose_distance", float("inf"), "Training pairs alike in pose (--fvae_max_pose_distance, px at 128 x 128)."
)
flags.DEFINE_float("landmark_weight", 0.0, "Weight of the landmark term (--fvae_landmark_weight; 0: off).")
flags.DEFINE_float("self_pairs", 0.0, "Fraction of training pairs that are a photo with itself (--fvae_self_pairs).")
flags.DEFINE_enum(
    "edit_directions", "paired", ["paired", "label_means"],
    "Algorithm 1's latent steps (fvae.editing.expression_directions): pose-alike pairs of one person, or the "
    "paper's label means.",
)  # fmt: skip
flags.DEFINE_bool("edit_relative", True, "Edit with g(S, Z_i) - g(S, Z(S)) (the default) or g(S, Z_i) (the paper's).")
flags.DEFINE_float("edit_strength", 1.0, "Algorithm 1's step scaled by this (edit-expression's --strength).")
flags.DEFINE_integer("pairs_per_person", 4, "Test pairs per test person with two photos or more.")

MODELS = {"flow": "flow VAE", "rgb": "VAE (pixels, the paper's baseline)"}
EXPRESSION_FILTERS_OPEN = {"max_smile": float("inf"), "max_mouth_open": float("inf")}


def _prep(run_dir: pathlib.Path, folder: str, people, names, validation_fraction):
    from data_prep import job, stages
    from normalized_faces import data

    data_dir = run_dir / folder
    if (data_dir / data.METADATA_FILE).exists():
        return json.loads((data_dir / data.METADATA_FILE).read_text())["counts"], False
    manifest = lfw_result.photo_manifest(people, names, run_dir / f"{folder}.csv")
    from data_prep import filters

    config = stages.PrepConfig(
        mode="photos",
        validation_fraction=validation_fraction,
        thresholds=filters.FilterThresholds(**EXPRESSION_FILTERS_OPEN),
    )
    summary = job.run(
        str(manifest), str(data_dir), config, flag_values={"input": str(manifest), **EXPRESSION_FILTERS_OPEN}
    )
    job.print_summary(summary, str(data_dir))
    return summary, True


@lfw_result.stage("data prep, photos with every expression (train + validation people)")
def prepare_training_photos(run_dir, people, split):
    return _prep(run_dir, "photo_data", people, split["train"] + split["validation"], 0.1)


@lfw_result.stage("data prep, photos with every expression (test people)")
def prepare_test_photos(run_dir, people, split):
    return _prep(run_dir, "test_photo_data", people, split["test"], 0.0)


def train_config(run_dir: pathlib.Path, name: str):
    from normalized_faces.config import TrainConfig

    return TrainConfig().replace(
        method="fvae",
        fvae_output=name,
        data_dir=str(run_dir / "photo_data"),
        model_dir=str(run_dir / name),
        fvae_base_channels=FLAGS.base_channels,
        batch_size=FLAGS.fvae_batch_size,
        train_steps=FLAGS.fvae_train_steps,
        fvae_mask_steps=FLAGS.fvae_train_steps // 4 if name == "flow" else 0,
        learning_rate=3e-4,
        fvae_coherence_weight=FLAGS.coherence_weight,
        fvae_coherence_alpha=FLAGS.coherence_alpha,
        fvae_kl_weight=FLAGS.kl_weight,
        fvae_reconstruction_region=FLAGS.reconstruction_region,
        fvae_max_pose_distance=FLAGS.max_pose_distance,
        fvae_reconstruction_highpass=FLAGS.reconstruction_highpass,
        fvae_landmark_weight=FLAGS.landmark_weight,
        fvae_self_pairs=FLAGS.self_pairs,
        # float32 everywhere: precision "auto" picks mixed_bfloat16 on AMX CPUs, where the flow's
        # coherence term would sum 16,384 small squared differences in bfloat16; not measured.
        precision="float32",
        checkpoint_interval=250,
        summary_interval=50,
        validation_interval=500,
        validation_steps=5,
    )


def test_pairs(photos, per_person: int, seed: int = 0) -> list:
    """(s, t) index pairs: per_person random ordered pairs of each test person with two photos or more."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _, indices in sorted(photos.people_with_pairs().items()):
        for _ in range(per_person):
            s, t = rng.choice(indices, size=2, replace=False)
            pairs.append((int(s), int(t)))
    return pairs


def transferred_pairs(photos, pairs) -> tuple:
    """(sources, targets) uint8 [N, S, S, 3] for (s, t) index pairs, each S colour-transferred to
    its T as in training."""
    from normalized_faces.fvae import data as fvae_data

    sources = np.stack([fvae_data.colour_transfer(photos.images[s], photos.images[t]) for s, t in pairs])
    return sources, photos.images[[t for _, t in pairs]]


def to_uint8(images) -> np.ndarray:
    """Model-range images [-1, 1] -> uint8 (visualize.to_uint8 takes [0, 1])."""
    from normalized_faces import visualize

    return visualize.to_uint8((np.asarray(images, np.float32) + 1) / 2)


def psnr(a, b, weight=None) -> np.ndarray:
    """Per image PSNR in dB of images [N, H, W, C] in [-1, 1] (peak-to-peak 2); weight [N, H, W, 1]
    (optional, e.g. the face region): the mean squared error over the pixels it weights."""
    squared = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if weight is None:
        mse = squared.mean(axis=(1, 2, 3))
    else:
        weight = np.asarray(weight, np.float64)
        mse = (squared * weight).sum(axis=(1, 2, 3)) / (weight.sum(axis=(1, 2, 3)) * squared.shape[-1])
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def landmark_error(flows, photos, pairs) -> np.ndarray:
    """Per pair, the mean over the 68 landmarks of |t + F(t) - s| in pixels (losses.landmark_misses):
    flows [N, S, S, 2] (normalized), pairs (s, t) indices into photos."""
    from normalized_faces.fvae import losses

    sources = np.stack([photos.landmarks[s] for s, _ in pairs])
    targets = np.stack([photos.landmarks[t] for _, t in pairs])
    misses = losses.landmark_misses(np.asarray(flows, np.float32), sources, targets).numpy()
    return np.linalg.norm(misses, axis=-1).mean(axis=-1)


def predictions(models: dict, sources, targets, mean_flow) -> tuple:
    """(outputs, flows): each model's g(S, Z(T)) and the mean flow applied to S, name -> [N, 128, 128, 3]
    in [-1, 1]; and the flow model's flows [N, 128, 128, 2]."""
    import tensorflow as tf

    from normalized_faces.fvae.model import apply_flow

    out, flows = {name: [] for name in list(models) + ["mean flow"]}, []
    for start in range(0, len(sources), 32):
        s, t = sources[start : start + 32], targets[start : start + 32]
        for name, model in models.items():
            predicted = model({"source": s, "target": t})
            out[name].append(predicted["output"].numpy())
            if "flow" in predicted:
                flows.append(predicted["flow"].numpy())
        out["mean flow"].append(apply_flow(tf.constant(s), tf.repeat(mean_flow[None], len(s), axis=0)).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}, np.concatenate(flows)


def mean_training_flow(model, data_dir, batches: int = 20):
    """The paper's flow baseline: the flow model's flows averaged over training pairs [128, 128, 2]."""
    from normalized_faces.fvae import data as fvae_data

    photos = fvae_data.load_photos(data_dir, "train")
    total = 0.0
    pairs = fvae_data.pair_dataset(photos, 32, seed=123, augment=False, max_pose_distance=FLAGS.max_pose_distance)
    for batch in pairs.take(batches):
        total += model(batch)["flow"].numpy().mean(axis=0)
    return (total / batches).astype(np.float32)


@lfw_result.stage("evaluation on test pairs")
def evaluate(run_dir: pathlib.Path):
    from normalized_faces import inference
    from normalized_faces.fvae import data as fvae_data

    report_path = run_dir / "fvae_report.json"
    if report_path.exists():
        return json.loads(report_path.read_text()), False
    models = {name: inference.restore_training_model(run_dir / name) for name in MODELS}
    photos = fvae_data.load_photos(run_dir / "test_photo_data", "train")
    pairs = test_pairs(photos, FLAGS.pairs_per_person)
    sources, targets = transferred_pairs(photos, pairs)
    sources, targets = (np.asarray(fvae_data.to_model_range(x)) for x in (sources, targets))
    mean_flow = mean_training_flow(models["flow"], run_dir / "photo_data")
    np.save(run_dir / "mean_flow.npy", mean_flow)
    outputs, flows = predictions(models, sources, targets, mean_flow)
    outputs["identity (S itself)"] = sources
    # How far from S's landmarks each output samples where T shows its landmarks (px at 128).
    landmark_errors = {
        "flow": landmark_error(flows, photos, pairs),
        "mean flow": landmark_error(np.repeat(mean_flow[None], len(pairs), axis=0), photos, pairs),
        "identity (S itself)": landmark_error(np.zeros_like(flows), photos, pairs),
    }
    # T's face (its landmarks' hull): what --reconstruction_region=face trains the flow to reproduce.
    faces = np.stack([fvae_data.face_region(photos.landmarks[t], targets.shape[1]) for _, t in pairs])
    scores = {name: psnr(output, targets) for name, output in outputs.items()}
    face_scores = {name: psnr(output, targets, faces) for name, output in outputs.items()}
    report = {
        "pairs": len(pairs),
        "people": len(photos.people_with_pairs()),
        "psnr": {name: {"mean": float(v.mean()), "std": float(v.std())} for name, v in scores.items()},
        "face_psnr": {name: {"mean": float(v.mean()), "std": float(v.std())} for name, v in face_scores.items()},
        "landmark_error_px": {name: float(v.mean()) for name, v in landmark_errors.items()},
        "pair_indices": pairs,
    }
    report_path.write_text(json.dumps(report, indent=2))
    return report, True


def table(report: dict, steps: dict) -> str:
    lines = [
        f"PSNR (dB) of g(S, Z(T)) against T on {report['pairs']} pairs of {report['people']} LFW test people "
        "(face: on T's landmark hull only; landmark error: the mean distance between S's landmarks and where the output "
        "samples S at T's, px at 128)",
        "",
        "| method | training steps | PSNR mean | std | face PSNR mean | std | landmark error (px) |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"flow": "flow VAE (ours)", "rgb": "VAE, pixels (the paper's baseline)"}
    for name, values in report["psnr"].items():
        face = report["face_psnr"][name]
        landmarks = report.get("landmark_error_px", {}).get(name)
        landmarks = "" if landmarks is None else f"{landmarks:.2f}"
        lines.append(
            f"| {labels.get(name, name)} | {steps.get(name, '')} | {values['mean']:.2f} | {values['std']:.2f} "
            f"| {face['mean']:.2f} | {face['std']:.2f} | {landmarks} |"
        )
    return "\n".join(lines) + "\n"


def editor_for(model_dir: pathlib.Path, model):
    """The run's ExpressionEditor, as --edit_directions and --edit_relative say."""
    from normalized_faces.fvae.editing import ExpressionEditor, directions_for_run

    directions = directions_for_run(model_dir, model, FLAGS.edit_directions)
    return ExpressionEditor(model, directions, relative=FLAGS.edit_relative)


def editing_variant() -> str:
    """A name for --edit_directions, --edit_relative and --edit_strength, for files of results that depend on them."""
    name = f"{FLAGS.edit_directions}_{'relative' if FLAGS.edit_relative else 'absolute'}"
    return name + (f"_x{FLAGS.edit_strength:g}" if FLAGS.edit_strength != 1.0 else "")


def figures(run_dir: pathlib.Path, report: dict, count: int = 6) -> list:
    """Fig. 4 (source | flow VAE | VAE | mean flow | target), Fig. 7 (flow vs pixel upsampling) and
    edits of test photos towards neutral and smile; returns their paths."""
    import cv2
    import tensorflow as tf
    from PIL import Image

    from normalized_faces import data, inference, visualize
    from normalized_faces.fvae import data as fvae_data
    from normalized_faces.fvae.editing import apply_normalized_flow

    models = {name: inference.restore_training_model(run_dir / name) for name in MODELS}
    photos = fvae_data.load_photos(run_dir / "test_photo_data", "train")
    pairs = [tuple(p) for p in report["pair_indices"]]
    chosen = [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).astype(int)]
    sources, targets = transferred_pairs(photos, chosen)
    mean_flow = np.load(run_dir / "mean_flow.npy")
    outputs, _ = predictions(
        models, *(np.asarray(fvae_data.to_model_range(x)) for x in (sources, targets)), mean_flow=mean_flow
    )
    rows = [
        [
            sources[i],
            to_uint8(outputs["flow"][i]),
            to_uint8(outputs["rgb"][i]),
            to_uint8(outputs["mean flow"][i]),
            targets[i],
        ]
        for i in range(count)
    ]
    paths = [run_dir / "fvae_fig4.png"]
    titles = ["source S", "flow VAE", "VAE (pixels)", "mean flow", "target T"]
    Image.fromarray(visualize.image_grid(rows, column_titles=titles)).save(paths[-1])

    # Fig. 7: the same prediction at 224 px, by upsampling the flow (applied to the 224 crop) or the pixels.
    records = [
        data.decode_record(r.numpy())
        for r in tf.data.TFRecordDataset(data.record_files(run_dir / "test_photo_data", "train"))
    ]
    big_sources = np.stack([fvae_data.colour_transfer(records[s].image, records[t].image) for s, t in chosen[:3]])
    big_targets = np.stack([records[t].image for _, t in chosen[:3]])
    small = {
        k: np.asarray(
            fvae_data.to_model_range(np.stack([cv2.resize(x, (128, 128), interpolation=cv2.INTER_AREA) for x in v]))
        )
        for k, v in (("s", big_sources), ("t", big_targets))
    }
    flow_out = models["flow"]({"source": small["s"], "target": small["t"]})
    by_flow = np.clip(np.round(apply_normalized_flow(big_sources, flow_out["flow"])), 0, 255).astype(np.uint8)
    by_pixels = tf.image.resize(to_uint8(flow_out["output"].numpy()), [224, 224], method="bicubic").numpy()
    rows = [
        [big_sources[i], by_flow[i], np.clip(by_pixels[i], 0, 255).astype(np.uint8), big_targets[i]] for i in range(3)
    ]
    paths.append(run_dir / "fvae_fig7.png")
    Image.fromarray(
        visualize.image_grid(rows, column_titles=["source (224)", "flow upsampled", "pixels upsampled", "target"])
    ).save(paths[-1])

    # Algorithm 1 on test photos: towards neutral and towards smile, 3 steps each.
    editor = editor_for(run_dir / "flow", models["flow"])
    picks = [i for i in np.linspace(0, len(records) - 1, 4).astype(int)]
    faces = np.stack([records[i].image for i in picks])
    points = np.stack([records[i].landmarks for i in picks])
    rows = [[faces[i]] for i in range(len(picks))]
    titles = ["photo"]
    for to in ("neutral", "smile"):
        result = editor.edit(faces, points, to, steps=3, strength=FLAGS.edit_strength)
        for i in range(len(picks)):
            rows[i] += list(result["faces"][:, i])
        titles += [f"{to} 1/3", f"{to} 2/3", f"{to} 3/3"]
    paths.append(run_dir / f"fvae_edits_{editing_variant()}.png")
    Image.fromarray(visualize.image_grid(rows, column_titles=titles)).save(paths[-1])
    return paths


def save_small_figure(path: pathlib.Path, destination: pathlib.Path, halve: bool) -> None:
    """A result figure made small enough for the repository: quantized to 256 colours (and halved)."""
    from PIL import Image

    destination.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(path).convert("RGB")
    if halve:
        image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
    image.quantize(256, dither=Image.Dither.NONE).save(destination, optimize=True)


def main(argv):
    del argv
    run_dir, people, split = lfw_result.start_run()
    prepare_training_photos(run_dir, people, split)
    prepare_test_photos(run_dir, people, split)
    for name, label in MODELS.items():
        lfw_result.make_training_stage(name, label, train_config)(run_dir)
    report = evaluate(run_dir)
    steps = {name: lfw_result.trained_steps(run_dir / name) for name in MODELS}
    text = table(report, steps)
    (run_dir / "fvae_results.md").write_text(text)
    print(text)
    paths = figures(run_dir, report)
    for path in paths:
        print(f"wrote {path}")
    if FLAGS.figures_dir:
        for path in paths:
            save_small_figure(path, pathlib.Path(FLAGS.figures_dir) / path.name, halve=True)
        shutil.copyfile(run_dir / "fvae_results.md", pathlib.Path(FLAGS.figures_dir) / "fvae_results.md")


if __name__ == "__main__":
    app.run(main)
