"""The paper's evaluation: is the normalized face still the same person?

    python -m normalized_faces.evaluate --model=DIR --photos=DIR --output_dir=OUT
    python -m normalized_faces.evaluate --model=DIR --manifest=photos.jsonl --output_dir=OUT

For every test photo (identity folders <root>/<identity>/<photo>, or a manifest with landmarks):
the encoder distance between the photo and its normalized face, on the vector the encoder's
published verification threshold is defined on. Writes OUT/distance_histogram.png (the paper's
Fig. 12, threshold marked), OUT/report.json, and prints the share under the threshold. Also the
consistency across one person's photos: mean pairwise distance of their normalized faces against
that of the photos themselves (normalization should pull a person's photos together).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined on use, so importing this module defines none)."""
    flags.DEFINE_string("model", None, "Exported SavedModel or training model_dir.")
    flags.DEFINE_string("photos", None, "Folder <root>/<identity>/<photo> of test photos.")
    flags.DEFINE_string("manifest", None, "Or a manifest (.jsonl/.csv) with path, identity, landmarks.")
    flags.DEFINE_string("output_dir", None, "Where distance_histogram.png and report.json go.")
    flags.DEFINE_enum("detector", "hog", ["hog", "cnn"], "dlib face detector (photos without manifest landmarks).")


def _mean_pairwise(vectors, threshold) -> float | None:
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    if not pairs:
        return None
    return float(np.mean([threshold.distances(vectors[a], vectors[b]) for a, b in pairs]))


def plot_histogram(distances, threshold, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    axes.hist(distances, bins=min(30, max(5, len(distances) // 2)), color="#4477aa", edgecolor="white")
    axes.axvline(threshold.value, color="#cc3311", linestyle="--", label=f"verification threshold {threshold.value:g}")
    axes.set_xlabel(f"{threshold.distance.replace('_', ' ')} distance: photo vs its normalized face ({threshold.output})")
    axes.set_ylabel("photos")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def evaluate(model_path, items, output_dir, detector="hog", report=print) -> dict:
    """items: [(path, identity, landmarks or None)]. Returns the report dict (also written as JSON)."""
    from normalized_faces import inference
    from normalized_faces.cli import collect_faces, normalize

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = inference.load_model(model_path)
    threshold = model.threshold
    if threshold is None:
        raise ValueError(f"{model_path} carries no verification threshold (export it with this version of export.saved_model)")
    identities = {str(path): identity for path, identity, _ in items}
    jobs, failed = collect_faces([(path, landmarks) for path, _, landmarks in items], detector, report)
    jobs = [job for job in jobs if job.index == 0]  # the largest face of each photo
    results = normalize(model, jobs)
    normalized = np.stack([r["normalized_face"] for r in results]).astype(np.float32) / 255.0 if results else np.zeros([0, 224, 224, 3], np.float32)
    again = model(normalized) if len(normalized) else {"descriptor": np.zeros([0, 1])}
    photo_vectors = np.stack([r["descriptor"] for r in results]) if results else np.zeros([0, 1])
    distances = threshold.distances(photo_vectors, again["descriptor"]) if results else np.zeros([0])
    per_identity = {}
    for job, photo_vector, normalized_vector in zip(jobs, photo_vectors, again["descriptor"]):
        entry = per_identity.setdefault(identities[str(job.photo_path)], {"photos": [], "normalized": []})
        entry["photos"].append(photo_vector)
        entry["normalized"].append(normalized_vector)
    consistency = {
        identity: {"photos": _mean_pairwise(v["photos"], threshold), "normalized": _mean_pairwise(v["normalized"], threshold)}
        for identity, v in sorted(per_identity.items())
    }
    pairs = [c for c in consistency.values() if c["photos"] is not None]
    under = float(np.mean(distances < threshold.value)) if len(distances) else 0.0
    summary = {
        "model": model.source,
        "photos": len(items),
        "evaluated": len(jobs),
        "failed": [str(p) for p in failed],
        "threshold": {"value": threshold.value, "output": threshold.output, "distance": threshold.distance, "source": threshold.source},
        "share_under_threshold": under,
        "distance": {"mean": float(np.mean(distances)) if len(distances) else None, "max": float(np.max(distances)) if len(distances) else None},
        "consistency": {
            "mean_pairwise_distance_photos": float(np.mean([c["photos"] for c in pairs])) if pairs else None,
            "mean_pairwise_distance_normalized": float(np.mean([c["normalized"] for c in pairs])) if pairs else None,
            "per_identity": consistency,
        },
        "per_photo": [
            {"path": str(job.photo_path), "identity": identities[str(job.photo_path)], "distance": float(d), "same_person": bool(d < threshold.value)}
            for job, d in zip(jobs, distances)
        ],
    }
    (output_dir / "report.json").write_text(json.dumps(summary, indent=2))
    if len(distances):
        plot_histogram(distances, threshold, output_dir / "distance_histogram.png", f"{len(distances)} photos: {100 * under:.0f}% under the threshold")
    c = summary["consistency"]
    report(
        f"{len(jobs)} photos evaluated ({len(failed)} failed): {100 * under:.1f}% of normalized faces within the verification "
        f"threshold ({threshold.value:g}) of their photo; mean distance {summary['distance']['mean'] if len(distances) else float('nan'):.3f}"
    )
    if pairs:
        report(
            f"same-person spread: photos {c['mean_pairwise_distance_photos']:.3f} -> normalized {c['mean_pairwise_distance_normalized']:.3f} "
            "(mean pairwise distance; lower = more consistent)"
        )
    report(f"wrote {output_dir / 'report.json'} and {output_dir / 'distance_histogram.png'}")
    return summary


def items_from(photos=None, manifest=None):
    from data_prep.inputs import list_folder, read_manifest

    entries = (list_folder(photos) if photos else []) + (read_manifest(manifest) if manifest else [])
    return [(entry.path, entry.identity, entry.landmarks) for entry in entries]


def main(argv):
    del argv
    if not FLAGS.model or not FLAGS.output_dir or not (FLAGS.photos or FLAGS.manifest):
        raise app.UsageError("--model, --output_dir and --photos (or --manifest) are required")
    evaluate(FLAGS.model, items_from(FLAGS.photos, FLAGS.manifest), FLAGS.output_dir, FLAGS.detector)


if __name__ == "__main__":
    define_flags()
    app.run(main)
