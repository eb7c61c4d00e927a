"""Calibrate data prep's filters on LFW's train people: every measure, acceptance, contact sheets.

    python benchmarks/filter_calibration.py [--lfw=../shared/faces/lfw] [--output_dir=/tmp/filter_calibration]

For each photo of the train people of the committed split (experiments/lfw_split.py; never the
test people) it runs what data prep runs (decode, dlib HOG detection + 68 landmarks, alignment to
the 224 crop) and records every filter measure (data_prep/filters.py) in measures.jsonl, which a
re-run reuses. Then, per filter, a contact sheet (sheet_<measure>.png): a row of the photos just
inside the current threshold and a row just outside it, each with its value, to judge by eye
whether the threshold separates what a person would keep from what they would drop. Prints each
filter's acceptance alone, the acceptance of all filters together, and how many people keep
>= 3 photos. Sheets show LFW photos: they stay in --output_dir, outside the repository.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("lfw", str(REPO.parent / "shared" / "faces" / "lfw"), "LFW deep-funneled.")
flags.DEFINE_string("output_dir", "/tmp/filter_calibration", "measures.jsonl and the contact sheets.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes measuring photos.")
flags.DEFINE_integer("sheet_columns", 8, "Photos per row of a contact sheet.")
flags.DEFINE_list("set", [], "Thresholds to try instead of the defaults, e.g. --set=max_yaw=30,max_smile=0.2.")

_DETECTOR = None


def _measure(path: str) -> dict:
    """Every filter measure of one photo (as data prep computes them), or why there is none."""
    global _DETECTOR
    from data_prep import filters
    from normalized_faces import alignment, photos
    from normalized_faces.detection import FaceDetector

    if _DETECTOR is None:
        _DETECTOR = FaceDetector("hog")
    image = photos.decode_photo(pathlib.Path(path).read_bytes())
    faces = _DETECTOR(image)
    if not faces:
        return {"path": path, "failed": "no_face"}
    aligned = alignment.align_face(image, faces[0].landmarks)
    return {"path": path, **filters.measure(aligned.image, aligned.landmarks, source=(image, faces[0].landmarks))}


# (measure, the filter's threshold field, True when values above the threshold pass)
FILTERS = [
    ("chroma", "min_chroma", True),
    ("yaw", "max_yaw", False),
    ("pitch", "max_pitch", False),
    ("sharpness", "min_sharpness", True),
    ("eye_open", "min_eye_open", True),
    ("mouth_open", "max_mouth_open", False),
    ("smile", "max_smile", False),
    ("glasses", "max_glasses", False),
]


def passes(value: float, threshold: float, above: bool, measure: str) -> bool:
    if measure in ("yaw", "pitch"):
        return abs(value) <= threshold
    return value >= threshold if above else value <= threshold


def contact_sheet(rows_of_entries, titles, path):
    from normalized_faces import alignment, photos, visualize
    from normalized_faces.detection import FaceDetector

    detector = FaceDetector("hog")
    rows, labels = [], []
    for entries, title in zip(rows_of_entries, titles):
        cells = []
        for entry, value in entries:
            image = photos.decode_photo(pathlib.Path(entry).read_bytes())
            face = detector(image)[0]
            crop = alignment.align_face(image, face.landmarks).image
            cells.append(
                visualize.label_image(
                    cv2.resize(crop[16:208, 16:208], (128, 128), interpolation=cv2.INTER_AREA), f"{value:.3g}"
                )
            )
        rows.append(cells)
        labels.append(title)
    width = max(len(r) for r in rows)
    blank = np.full_like(rows[0][0], 255)
    rows = [r + [blank] * (width - len(r)) for r in rows]
    visualize.write_png(path, visualize.image_grid(rows, labels=labels))


def main(argv):
    del argv
    from data_prep import filters
    from experiments import lfw_split

    output = pathlib.Path(FLAGS.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    people, split = lfw_split.load_split(FLAGS.lfw)
    paths = [str(p) for name in split["train"] for p in people[name]]
    store = output / "measures.jsonl"
    done = {}
    if store.exists():
        done = {e["path"]: e for e in map(json.loads, store.read_text().splitlines())}
    todo = [p for p in paths if p not in done]
    print(
        f"{len(split['train'])} train people, {len(paths)} photos; {len(todo)} to measure with {FLAGS.workers} processes",
        flush=True,
    )
    start = time.time()
    with store.open("a") as file, multiprocessing.get_context("spawn").Pool(FLAGS.workers) as pool:
        for i, entry in enumerate(pool.imap_unordered(_measure, todo, chunksize=8), 1):
            file.write(json.dumps(entry) + "\n")
            done[entry["path"]] = entry
            if i % 500 == 0:
                print(f"  {i}/{len(todo)} photos, {i / (time.time() - start):.1f}/s", flush=True)
    entries = [done[p] for p in paths if "failed" not in done[p]]
    print(f"{len(entries)} of {len(paths)} photos with a face", flush=True)
    overrides = {name: float(value) for name, value in (item.split("=", 1) for item in FLAGS.set)}
    thresholds = dataclasses.replace(filters.FilterThresholds(), **overrides)
    keep_all = np.ones(len(entries), bool)
    for measure, field, above in FILTERS:
        values = np.array([e[measure] for e in entries])
        threshold = getattr(thresholds, field)
        kept = np.array([passes(v, threshold, above, measure) for v in values])
        keep_all &= kept
        print(
            f"{measure:>11} {field} = {threshold:g}: keeps {kept.mean():.1%}  "
            f"(5/25/50/75/95%: {np.percentile(values, [5, 25, 50, 75, 95]).round(3).tolist()})"
        )
        key = np.abs(values) if measure in ("yaw", "pitch") else values
        order = np.argsort(key)
        position = int(np.searchsorted(key[order], threshold))
        n = FLAGS.sheet_columns
        below = [(entries[i]["path"], values[i]) for i in order[max(0, position - n) : position]]
        above_side = [(entries[i]["path"], values[i]) for i in order[position : position + n]]
        inside, outside = (above_side, below) if above else (below, above_side)
        contact_sheet(
            [inside, outside],
            [f"{measure}: kept, just inside {threshold:g}", f"{measure}: dropped, just outside"],
            output / f"sheet_{measure}.png",
        )
    names = [pathlib.Path(e["path"]).parent.name for e, k in zip(entries, keep_all) if k]
    counts = {name: names.count(name) for name in set(names)}
    print(
        f"all filters: keep {keep_all.mean():.1%} of photos; "
        f"{sum(c >= 3 for c in counts.values())} of {len(split['train'])} people keep >= 3",
        flush=True,
    )
    print(f"sheets in {output}", flush=True)


if __name__ == "__main__":
    app.run(main)
