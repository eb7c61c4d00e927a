"""The paper's evaluation, made hard to pass with an average face: is the normalized face the person?

    python -m normalized_faces.evaluate --model=DIR --photos=DIR --output_dir=OUT [--judges=dlib_resnet,facenet]
    python -m normalized_faces.evaluate --model=DIR --manifest=photos.jsonl --output_dir=OUT

Test photos come as identity folders (<root>/<identity>/<photo>) or a manifest with landmarks. Each
is aligned and normalized by the model; then a *judge* (a face-recognition network) compares, on
the vector its published verification threshold is defined on:

  genuine         share of photos whose normalized face is within the threshold of the photo;
  impostor        share of (normalized face, photo of another person) pairs within the threshold:
                  a model that outputs one face for everyone scores high here too;
  identification  rank-1 / rank-5 accuracy of each normalized face against a gallery of one photo
                  per person (each person's first photo by path; probes are that person's other
                  photos, so a probe never meets its own source photo). Chance is 1 / people (k / people);
                  the photos themselves, as probes, are the ceiling;
  mean-face baseline  the same figures with the training data's mean face (kept with the model) in
                  place of every normalized face: a model is only as good as its margin over this.

By default the judges are every encoder whose weights are on this machine, led by one the model was
NOT trained with (a FaceNet-trained model is judged first by dlib's network and the other way
round), so the model is not graded only by the network its identity loss optimizes. Writes
OUT/report.json (every figure, per judge and per photo) and OUT/distance_histogram[_<judge>].png
(genuine and impostor distances, mean-face baseline, threshold), and prints a summary that leads with
identification and the margin over the baseline. Photos that cannot be read or show no face get a
line each and the others are evaluated; --output_dir is checked before the model loads.
Exit codes (as normalize-face's): 0 every photo evaluated; 1 some photos failed (the figures are of
the others); 2 nothing was evaluated (bad flags, output folder or model, no face at all).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
JUDGES = ("dlib_resnet", "facenet")


def define_flags():
    """The command's flags (defined on use, so importing this module defines none)."""
    flags.DEFINE_string(
        "model", None, "Exported SavedModel or training model_dir; default: the model shipped with the package."
    )
    flags.DEFINE_string("photos", None, "Folder <root>/<identity>/<photo> of test photos.")
    flags.DEFINE_string("manifest", None, "Or a manifest (.jsonl/.csv) with path, identity, landmarks.")
    flags.DEFINE_string("output_dir", None, "Where the histograms and report.json go.")
    flags.DEFINE_list(
        "judges",
        None,
        f"Recognizers that judge ({', '.join(JUDGES)}); default: every one available, one the model was not trained with first.",
    )
    flags.DEFINE_enum(
        "detector",
        "auto",
        ["auto", "hog", "cnn"],
        "dlib face detector for photos without manifest landmarks (auto: HOG, CNN where HOG finds none).",
    )


def default_judges(training_encoder: str | None) -> list:
    """Every judge, the ones the model was not trained with first."""
    return sorted(JUDGES, key=lambda name: name == training_encoder)


def rank_accuracy(probe_vectors, probe_people, gallery_vectors, gallery_people, threshold, ranks=(1, 5)) -> dict:
    """Share of probes whose own person is among the k nearest gallery entries, for each k.

    Args:
      probe_vectors: [P, D]; probe_people: [P] labels; gallery_vectors: [G, D]; gallery_people: [G]
      distinct labels. Ties in distance count against the probe (a constant probe ranks no one first).
    """
    if not len(probe_vectors):
        return {f"rank{k}": None for k in ranks}
    distances = threshold.distances(np.asarray(probe_vectors)[:, None], np.asarray(gallery_vectors)[None])  # [P, G]
    gallery_people = np.asarray(gallery_people)
    own = distances[np.arange(len(probe_people)), [int(np.flatnonzero(gallery_people == p)[0]) for p in probe_people]]
    # Rank = how many gallery entries are at least as close as the right one (ties pessimistic).
    rank = (distances <= own[:, None]).sum(axis=1)
    return {f"rank{k}": float(np.mean(rank <= k)) for k in ranks}


def judge_figures(judge_name, threshold, photos, normalized, people, gallery, mean_vector=None) -> dict:
    """Every figure for one judge, given its vectors.

    Args:
      photos, normalized: [N, D] the judge's vectors of the aligned photos and their normalized faces.
      people: [N] identity of each. gallery: [N] bool, the one gallery photo per person.
      mean_vector: [D] the judge's vector of the mean face, or None.
    """
    people = np.asarray(people)
    probes = ~gallery
    other = people[:, None] != people[None, :]  # [N, N]: normalized i vs photo j of another person
    genuine = threshold.distances(photos, normalized)
    impostor = threshold.distances(normalized[:, None], photos[None])[other]
    figures = {
        "judge": judge_name,
        "threshold": {
            "value": threshold.value,
            "output": threshold.output,
            "distance": threshold.distance,
            "source": threshold.source,
        },
        "people": int(len(set(people))),
        "photos": int(len(people)),
        "probes": int(probes.sum()),
        "chance": {"rank1": 1.0 / len(set(people)), "rank5": min(1.0, 5.0 / len(set(people)))},
        "normalized": {
            "genuine": float(np.mean(genuine < threshold.value)),
            "impostor": float(np.mean(impostor < threshold.value)) if impostor.size else None,
            **rank_accuracy(normalized[probes], people[probes], photos[gallery], people[gallery], threshold),
            "genuine_distance_mean": float(genuine.mean()),
            "impostor_distance_mean": float(impostor.mean()) if impostor.size else None,
        },
        "photos_ceiling": rank_accuracy(photos[probes], people[probes], photos[gallery], people[gallery], threshold),
        "_distances": {"genuine": genuine, "impostor": impostor},
    }
    if mean_vector is not None:
        constant = np.repeat(np.asarray(mean_vector)[None], len(people), axis=0)
        baseline = threshold.distances(photos, constant)
        figures["mean_face_baseline"] = {
            "genuine": float(np.mean(baseline < threshold.value)),
            # The mean face is no one: against other people's photos it is as close as against the own.
            "impostor": float(np.mean(np.broadcast_to(baseline[None], other.shape)[other] < threshold.value))
            if other.any()
            else None,
            **rank_accuracy(constant[probes], people[probes], photos[gallery], people[gallery], threshold),
            "genuine_distance_mean": float(baseline.mean()),
        }
        figures["_distances"]["mean_face"] = baseline
    return figures


def plot_histogram(figures, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold = figures["threshold"]
    distances = figures["_distances"]
    everything = np.concatenate([v for v in distances.values() if len(v)])
    bins = np.linspace(0.0, max(everything.max(), threshold["value"]) * 1.05, 40)
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    styles = {
        "genuine": dict(color="#228833", label="normalized face vs its own photo (genuine)"),
        "impostor": dict(color="#cc3311", label="normalized face vs another person's photo (impostor)"),
        "mean_face": dict(color="#777777", label="mean face vs each photo (baseline)", histtype="step", linewidth=1.5),
    }
    for key, values in distances.items():
        if len(values):
            axes.hist(values, bins=bins, density=True, alpha=0.55 if key != "mean_face" else 1.0, **styles[key])
    axes.axvline(
        threshold["value"], color="black", linestyle="--", label=f"verification threshold {threshold['value']:g}"
    )
    axes.set_xlabel(f"{threshold['distance'].replace('_', ' ')} distance ({figures['judge']} {threshold['output']})")
    axes.set_ylabel("density")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    from normalized_faces.batch import write_bytes_atomically

    write_bytes_atomically(path, buffer.getvalue())


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_lines(figures) -> list:
    """The printed summary for one judge: identification and the margin over the baseline first."""
    n, base, ceiling = figures["normalized"], figures.get("mean_face_baseline"), figures["photos_ceiling"]
    lines = [
        f"judged by {figures['judge']} ({figures['people']} people, {figures['photos']} photos, {figures['probes']} probes):",
        f"  identification rank-1 {_percent(n['rank1'])}  rank-5 {_percent(n['rank5'])}"
        f"  | mean face {_percent(base['rank1']) if base else 'n/a'} / {_percent(base['rank5']) if base else 'n/a'}"
        f"  | chance {_percent(figures['chance']['rank1'])} / {_percent(figures['chance']['rank5'])}"
        f"  | photos (ceiling) {_percent(ceiling['rank1'])} / {_percent(ceiling['rank5'])}",
    ]
    if base and n["rank1"] is not None:  # no probes (one photo a person): no identification to compare
        lines.append(
            f"  margin over the mean face: rank-1 {100 * ((n['rank1'] or 0) - (base['rank1'] or 0)):+.1f} points"
        )
    lines.append(
        f"  verification at threshold {figures['threshold']['value']:g}: genuine {_percent(n['genuine'])} within, "
        f"impostor {_percent(n['impostor'])} within"
        + (f" | mean face: genuine {_percent(base['genuine'])}, impostor {_percent(base['impostor'])}" if base else "")
    )
    return lines


def _mean_pairwise(vectors, threshold) -> float | None:
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    if not pairs:
        return None
    return float(np.mean([threshold.distances(vectors[a], vectors[b]) for a, b in pairs]))


def _judge_vectors(encoder, images, batch=32) -> np.ndarray:
    output = encoder.threshold.output
    parts = [
        encoder(images[start : start + batch].astype(np.float32) / 255.0)[output].numpy()
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros([0, 1])


def load_judges(names, image_size, report=print) -> dict:
    """{name: encoder} for the judges whose weights are here; the others are reported and skipped."""
    from normalized_faces.encoders import get_encoder
    from normalized_faces.encoders.facenet import FacenetWeightsNotFound

    judges = {}
    for name in names:
        if name not in JUDGES:
            raise ValueError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}")
        try:
            judges[name] = get_encoder(name, aligned_size=image_size)
        except FacenetWeightsNotFound as missing:
            report(
                f"judge {name} skipped: its weights are not on this machine ({str(missing).splitlines()[0]} Run fetch-facenet-weights.)"
            )
    return judges


def evaluate(model_path, items, output_dir, detector="auto", judges=None, report=print) -> dict:
    """items: [(path, identity, landmarks or None)]. Returns the report dict (also written as JSON)."""
    from normalized_faces import inference
    from normalized_faces.batch import collect_faces, prepare_output_dir, write_bytes_atomically
    from normalized_faces.cli import normalize

    output_dir = prepare_output_dir(output_dir)  # before the model loads
    model = inference.load_model(model_path)
    identities = {str(path): identity for path, identity, _ in items}
    faces_found, failed = collect_faces([(path, landmarks) for path, _, landmarks in items], detector, report)
    faces_found = [found for found in faces_found if found.index == 0]  # the largest face of each photo
    if not faces_found:
        raise ValueError(f"none of the {len(items)} test photos gave a face to evaluate")
    results = normalize(model, faces_found)
    photos = np.stack([found.aligned.image for found in faces_found])
    normalized = np.stack([r["normalized_face"] for r in results])
    people = np.array([identities[str(found.photo_path)] for found in faces_found])
    # The gallery: each person's first photo by path. Probes: the rest.
    gallery = np.zeros(len(faces_found), bool)
    for person in sorted(set(people)):
        members = [i for i in np.flatnonzero(people == person)]
        gallery[min(members, key=lambda i: str(faces_found[i].photo_path))] = True
    names = list(judges) if judges else default_judges(model.encoder_name)
    if model.mean_face is None:
        report(f"{model.source} carries no mean face (trained before it was kept): the mean-face baseline is left out")
    encoders = load_judges(names, model.image_size, report)
    if not encoders:
        raise ValueError(f"no judge available among {names}")
    by_judge = {}
    for name, encoder in encoders.items():
        photo_vectors = _judge_vectors(encoder, photos)
        normalized_vectors = _judge_vectors(encoder, normalized)
        mean_vector = _judge_vectors(encoder, model.mean_face[None])[0] if model.mean_face is not None else None
        figures = judge_figures(
            name, encoder.threshold, photo_vectors, normalized_vectors, people, gallery, mean_vector
        )
        spread = {}
        for person in sorted(set(people)):
            members = np.flatnonzero(people == person)
            spread[person] = {
                "photos": _mean_pairwise(photo_vectors[members], encoder.threshold),
                "normalized": _mean_pairwise(normalized_vectors[members], encoder.threshold),
            }
        with_pairs = [v for v in spread.values() if v["photos"] is not None]
        figures["consistency"] = {
            "mean_pairwise_distance_photos": float(np.mean([v["photos"] for v in with_pairs])) if with_pairs else None,
            "mean_pairwise_distance_normalized": float(np.mean([v["normalized"] for v in with_pairs]))
            if with_pairs
            else None,
        }
        figures["trained_with_this_judge"] = name == model.encoder_name
        by_judge[name] = figures
    lead = next(iter(by_judge))
    for name, figures in by_judge.items():
        n = figures["normalized"]
        title = f"{figures['judge']}: genuine {_percent(n['genuine'])}, impostor {_percent(n['impostor'])} within the threshold"
        plot_histogram(figures, output_dir / f"distance_histogram_{name}.png", title)
        if name == lead:
            plot_histogram(figures, output_dir / "distance_histogram.png", title)
    per_photo = []
    for i, found in enumerate(faces_found):
        entry = {"path": str(found.photo_path), "identity": str(people[i]), "gallery": bool(gallery[i])}
        for name, figures in by_judge.items():
            entry[f"{name}_distance"] = float(figures["_distances"]["genuine"][i])
        per_photo.append(entry)
    summary = {
        "model": model.source,
        "trained_with": model.encoder_name,
        "photos": len(items),
        "evaluated": len(faces_found),
        "failed": [str(p) for p in failed],
        "lead_judge": lead,
        "judges": {name: {k: v for k, v in f.items() if not k.startswith("_")} for name, f in by_judge.items()},
        "per_photo": per_photo,
    }
    write_bytes_atomically(output_dir / "report.json", json.dumps(summary, indent=2).encode())
    report(
        f"{len(faces_found)} photos of {len(set(people))} people evaluated ({len(failed)} failed); model trained with {model.encoder_name}"
    )
    for figures in by_judge.values():
        for line in summary_lines(figures):
            report(
                line
                + (
                    "  [the model's own training encoder]"
                    if line.startswith("judged") and figures["trained_with_this_judge"]
                    else ""
                )
            )
    report(f"wrote {output_dir / 'report.json'} and distance_histogram*.png")
    return summary


def items_from(photos=None, manifest=None):
    from normalized_faces.inputs import list_folder, read_manifest

    entries = (list_folder(photos) if photos else []) + (read_manifest(manifest) if manifest else [])
    return [(entry.path, entry.identity, entry.landmarks) for entry in entries]


def run(model_path, photos, manifest, output_dir, detector="auto", judges=None, report=print) -> int:
    """The command, as a function. Returns the exit code (the module docstring's)."""
    from normalized_faces.batch import OutputDirError
    from normalized_faces.inference import ModelLoadError

    try:
        items = items_from(photos, manifest)
    except (OSError, ValueError) as error:
        report(f"cannot read the test photos: {error}")
        return 2
    try:
        summary = evaluate(model_path, items, output_dir, detector, judges, report)
    except (OutputDirError, ModelLoadError) as error:
        report(str(error))
        return 2
    except ValueError as error:  # no face in any photo, no judge
        report(f"nothing evaluated: {error}")
        return 2
    return 1 if summary["failed"] else 0


def main(argv):
    del argv
    if not FLAGS.output_dir or not (FLAGS.photos or FLAGS.manifest):
        raise app.UsageError("--output_dir and --photos (or --manifest) are required")
    sys.exit(run(FLAGS.model, FLAGS.photos, FLAGS.manifest, FLAGS.output_dir, FLAGS.detector, FLAGS.judges))


if __name__ == "__main__":
    define_flags()
    from normalized_faces.config_flags import run_command

    run_command(main)
