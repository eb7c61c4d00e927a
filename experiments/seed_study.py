"""The recipe's seed lottery, measured: each arm (a recipe) trained from several seeds on the same
LFW data, every seed judged on the committed test people, one JSON per seed committed.

    python -m experiments.seed_study --data_dir=RUN/data --run_dir=RUN --arms=paper,robust --seeds=3 \
        --train_steps=500 [--results_dir=docs/results/seed_study]

--data_dir is lfw_result's data prep output (its train + validation people; `python -m
experiments.lfw_result` makes it as its first stage, ~30-60 min on 2 cores); without it the data
prep runs here into RUN/data. Arms (ARMS below): `paper` is lfw_result's recipe with the identity
loss; `robust` adds the identity loss's jitter and the shared-residual loss (identity_robustness).

Per arm and seed: training (RUN/<arm>_seed<k>, resumable), evaluation on the test people by dlib's
network (never trained with) and FaceNet (trained against), and the shared-pattern measure of the
normalized faces of every test person's first photo beside that of their aligned photos (the
same people, the same count). Each finished seed writes RESULTS/<arm>_seed<k>.json; a seed whose
JSON is already in RESULTS is not run again, so a study continues across sessions from what was
committed. RESULTS/summary.md tables every figure per seed with its mean and range; RESULTS/grid.png
shows 6 test people under every arm and seed. Seeds run in the order seed 0 of every arm, then seed
1, ..., so a study stopped early stays balanced.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import lfw_result, lfw_split  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "lfw_result's data prep output; default: RUN/data, made here if missing.")
flags.DEFINE_list("arms", ["paper", "robust"], "Recipes to compare (ARMS).")
flags.DEFINE_integer("seeds", 3, "Seeds per arm (0 .. N-1).")
flags.DEFINE_integer("first_seed", 0, "First seed (to run a slice of a study in another process).")
flags.DEFINE_string(
    "results_dir", str(lfw_result.REPO / "docs" / "results" / "seed_study"), "Per-seed JSON, summary.md, grid.png."
)
flags.DEFINE_integer("pattern_people", 120, "Test people whose first photo enters the shared-pattern measure.")

# Each arm: TrainConfig fields over lfw_result's recipe (train_config, with the identity loss).
ARMS = {
    "paper": {},
    "robust": {"identity_jitter": 1.0, "shared_residual_weight": 5.0},
}


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def arm_config(run_dir: pathlib.Path, data_dir: pathlib.Path, arm: str, seed: int):
    return (
        lfw_result.train_config(run_dir, "with_identity")
        .replace(data_dir=str(data_dir), model_dir=str(run_dir / run_name(arm, seed)), seed=seed)
        .replace(**ARMS[arm])
    )


def shared_pattern_figures(model_dir: pathlib.Path, photos: np.ndarray, mean_landmarks) -> dict:
    """The shared-pattern measure of the model's normalized faces of `photos` and of the photos."""
    from normalized_faces import inference
    from normalized_faces.evaluation import measures

    normalized = inference.load_model(str(model_dir))(photos.astype(np.float32) / 255.0)["normalized_face"]
    mask = measures.face_mask(mean_landmarks, photos.shape[1])
    return {
        "people": int(len(photos)),
        "normalized": measures.shared_pattern(normalized, mask=mask),
        "photos": measures.shared_pattern(photos, mask=mask),
        "normalized_sharpness_over_photos": float(
            np.mean([measures.sharpness(n, mask) for n in normalized])
            / np.mean([measures.sharpness(p, mask) for p in photos])
        ),
    }


def seed_result(run_dir, data_dir, arm, seed, people, split, photos) -> dict:
    """Trains, evaluates and measures one seed of one arm (each step resumable); returns its figures."""
    from normalized_faces import data, evaluate
    from normalized_faces.train import train

    config = arm_config(run_dir, data_dir, arm, seed)
    start = time.time()
    trained = train(config)
    train_seconds = time.time() - start
    model_dir = pathlib.Path(config.runtime.model_dir)
    report = evaluate.evaluate(
        str(model_dir),
        lfw_result.test_items(people, split),
        run_dir / f"evaluation_{run_name(arm, seed)}",
        judges=list(lfw_result.JUDGES),
    )
    figures = {
        name: {
            "rank1": judged["normalized"]["rank1"],
            "rank5": judged["normalized"]["rank5"],
            "genuine": judged["normalized"]["genuine"],
            "impostor": judged["normalized"]["impostor"],
            "mean_face_rank1": (judged.get("mean_face_baseline") or {}).get("rank1"),
            "photos_rank1": judged["photos_ceiling"]["rank1"],
        }
        for name, judged in report["judges"].items()
    }
    return {
        "arm": arm,
        "seed": seed,
        "recipe": ARMS[arm],
        "train_steps": int(lfw_result.trained_steps(model_dir) or trained.get("step", 0)),
        "train_seconds": round(train_seconds, 1),
        "judges": figures,
        "shared_pattern": shared_pattern_figures(model_dir, photos, data.mean_landmarks(str(data_dir))),
        "test_people": report["judges"][lfw_result.JUDGES[0]]["people"],
        "test_photos": report["evaluated"],
    }


def _stats(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def summary_markdown(results: list) -> str:
    """One table row per arm and seed, then per arm the mean (range) of every figure."""
    header = (
        "| arm | seed | steps | dlib rank-1 | dlib genuine | FaceNet rank-1 | FaceNet genuine | shared pattern "
        "(normalized / photos) | sharpness vs photos |\n|---|---|---|---|---|---|---|---|---|"
    )

    def row(r):
        d, f, s = r["judges"]["dlib_resnet"], r["judges"]["facenet"], r["shared_pattern"]
        return (
            f"| {r['arm']} | {r['seed']} | {r['train_steps']} | {100 * d['rank1']:.1f}% | {100 * d['genuine']:.1f}% | "
            f"{100 * f['rank1']:.1f}% | {100 * f['genuine']:.1f}% | {s['normalized']:.3f} / {s['photos']:.3f} | "
            f"{s['normalized_sharpness_over_photos']:.3f} |"
        )

    lines = [header] + [row(r) for r in results]
    lines += [
        "",
        "| arm | seeds | dlib rank-1 mean (range) | FaceNet rank-1 | shared pattern | sharpness |",
        "|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        lines.append(
            f"| {arm} | {len(mine)} | {_stats([r['judges']['dlib_resnet']['rank1'] for r in mine])} | "
            f"{_stats([r['judges']['facenet']['rank1'] for r in mine])} | "
            f"{_stats([r['shared_pattern']['normalized'] for r in mine])} | "
            f"{_stats([r['shared_pattern']['normalized_sharpness_over_photos'] for r in mine])} |"
        )
    return "\n".join(lines) + "\n"


def study_grid(run_dir, results, people, split, path: pathlib.Path):
    """6 test people: photo | every arm and seed's normalized face (the runs still on this machine)."""
    dirs = {run_name(r["arm"], r["seed"]): run_dir / run_name(r["arm"], r["seed"]) for r in results}
    dirs = {name: folder for name, folder in dirs.items() if (folder / "checkpoints").exists()}
    if not dirs:
        return None
    photos, normalized = lfw_result.normalize_test_people(people, split, 6, dirs)
    rows = [[photo, *(normalized[name][i] for name in dirs)] for i, photo in enumerate(photos)]
    return lfw_result.save_small_grid(rows, ["photo", *dirs], path)


def main(argv):
    del argv
    from normalized_faces.batch import collect_faces

    run_dir = pathlib.Path(FLAGS.run_dir)
    results_dir = pathlib.Path(FLAGS.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    people, split = lfw_split.load_split(FLAGS.lfw)
    data_dir = pathlib.Path(FLAGS.data_dir) if FLAGS.data_dir else run_dir / "data"
    if not FLAGS.data_dir:
        lfw_result.prepare_data(run_dir, people, split, FLAGS.num_morphs)
    unknown = [arm for arm in FLAGS.arms if arm not in ARMS]
    if unknown:
        raise app.UsageError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    names = split["test"][: FLAGS.pattern_people]
    found, _ = collect_faces([(people[name][0], None) for name in names], report=lambda line: None)
    photos = np.stack([face.aligned.image for face in found if face.index == 0])
    for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
        for arm in FLAGS.arms:
            path = results_dir / f"{run_name(arm, seed)}.json"
            if path.exists():
                print(f"== {run_name(arm, seed)}: already in {path}", flush=True)
                continue
            print(f"== {run_name(arm, seed)}", flush=True)
            result = seed_result(run_dir, data_dir, arm, seed, people, split, photos)
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result["judges"]) + "\n" + json.dumps(result["shared_pattern"]), flush=True)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*_seed*.json"))]
    results = [r for r in results if r["arm"] in FLAGS.arms]
    (results_dir / "summary.md").write_text(summary_markdown(results))
    study_grid(run_dir, results, people, split, results_dir / "grid.png")
    print((results_dir / "summary.md").read_text())


if __name__ == "__main__":
    app.run(main)
