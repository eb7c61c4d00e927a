"""FaceNet 20170512-110547 on LFW pairs: how to frame its 160 x 160 chip, and its threshold.

    python benchmarks/facenet_lfw.py [--lfw=../shared/faces/lfw] [--pairs=3000] [--cache_dir=/tmp/facenet_lfw]

Pairs are drawn with a fixed seed (half same-person) from LFW people outside the project's test
split (experiments/lfw_split.py): calibration never touches the test people. Each photo is framed
three ways and embedded:
  native      the framing the model was evaluated with by its author: MTCNN's box (the `mtcnn`
              package, same network and thresholds as Sandberg's align_dataset_mtcnn) widened by
              a 32-px margin (16 px a side), resized to 160 x 160; then prewhitening.
  aligned     this project's path: dlib's 68 landmarks (HOG detector; its CNN detector where HOG
              finds no face) -> aligned 224 crop (eyes 55 px apart) -> the encoder's fixed
              framing (facenet.FRAMING) resampled to 160 x 160.
  aligned_1.25  the previous fixed framing (a square 1.25 x the landmark box), for comparison.
It also measures the framing: the mean MTCNN box + margin relative to the 68 landmarks' box, the
numbers facenet.FRAMING holds. Accuracy is LFW-style 10-fold: a threshold chosen on 9 folds, accuracy
on the 10th; plus the single threshold that is best over all pairs (the encoder's published
threshold). Per-photo detections and embeddings are cached in --cache_dir (re-runs are quick).
Photos where a detector finds no face count as errors for that framing (reported).
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import lfw_split  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "lfw", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw"), "LFW folder <Name>/<photo>."
)
flags.DEFINE_integer("pairs", 3000, "Pairs to draw (half same-person).")
flags.DEFINE_integer("seed", 0, "Pair sampling seed.")
flags.DEFINE_string("cache_dir", "/tmp/facenet_lfw", "Per-photo detections and embeddings (resumable).")
flags.DEFINE_integer("margin", 32, "MTCNN margin in photo pixels (Sandberg's LFW alignment: 32).")

ALIGNED_SIZE = 224


def centre_most(boxes, shape):
    """Index of the box (left, top, right, bottom) whose centre is closest to the image centre."""
    centre = np.array([shape[1], shape[0]]) / 2.0
    distances = [np.hypot(*(np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) - centre)) for b in boxes]
    return int(np.argmin(distances))


def detect_all(paths, cache: pathlib.Path):
    """Per photo: aligned 224 crop (or None), native 160 chip (or None), framing numbers (or None)."""
    from mtcnn import MTCNN

    from normalized_faces import alignment
    from normalized_faces.detection import FaceDetector

    if cache.exists():
        stored = np.load(cache, allow_pickle=True)
        if list(stored["paths"]) == [str(p) for p in paths]:
            return stored["aligned"], stored["native"], stored["aligned_ok"], stored["native_ok"], stored["framing"]
    dlib_detector, mtcnn = FaceDetector("hog"), MTCNN()
    aligned = np.zeros([len(paths), ALIGNED_SIZE, ALIGNED_SIZE, 3], np.uint8)
    native = np.zeros([len(paths), 160, 160, 3], np.uint8)
    aligned_ok = np.zeros(len(paths), bool)
    native_ok = np.zeros(len(paths), bool)
    framing = np.full([len(paths), 4], np.nan)
    start = time.time()
    for i, path in enumerate(paths):
        photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = dlib_detector(photo)
        landmarks = None
        if faces:
            face = faces[centre_most([f.box for f in faces], photo.shape)]
            landmarks = face.landmarks
            aligned[i] = alignment.align_face(photo, landmarks).image
            aligned_ok[i] = True
        found = mtcnn.detect_faces(photo)
        if found:
            boxes = [(x, y, x + w, y + h) for x, y, w, h in (f["box"] for f in found)]
            left, top, right, bottom = boxes[centre_most(boxes, photo.shape)]
            half = FLAGS.margin / 2
            left, top = int(max(left - half, 0)), int(max(top - half, 0))
            right, bottom = int(min(right + half, photo.shape[1])), int(min(bottom + half, photo.shape[0]))
            native[i] = cv2.resize(photo[top:bottom, left:right], (160, 160), interpolation=cv2.INTER_LINEAR)
            native_ok[i] = True
            if landmarks is not None:
                low, high = landmarks.min(0), landmarks.max(0)
                side = (high - low).max()
                offset = (np.array([(left + right) / 2, (top + bottom) / 2]) - (low + high) / 2) / side
                framing[i] = [offset[0], offset[1], (right - left) / side, (bottom - top) / side]
        if (i + 1) % 500 == 0:
            print(f"  detected {i + 1}/{len(paths)} photos ({(i + 1) / (time.time() - start):.1f}/s)", flush=True)
    np.savez(
        cache,
        paths=np.array([str(p) for p in paths]),
        aligned=aligned,
        native=native,
        aligned_ok=aligned_ok,
        native_ok=native_ok,
        framing=framing,
    )
    return aligned, native, aligned_ok, native_ok, framing


def cnn_fallback(paths, aligned, aligned_ok, cache: pathlib.Path):
    """Photos where dlib's HOG detector found no face, tried again with its CNN (MMOD) detector."""
    from normalized_faces import alignment
    from normalized_faces.detection import FaceDetector

    if cache.exists():
        stored = np.load(cache)
        return stored["aligned"], stored["aligned_ok"]
    aligned, aligned_ok = aligned.copy(), aligned_ok.copy()
    detector = FaceDetector("cnn")
    for i in np.flatnonzero(~aligned_ok):
        photo = cv2.cvtColor(cv2.imread(str(paths[i])), cv2.COLOR_BGR2RGB)
        faces = detector(photo)
        if faces:
            aligned[i] = alignment.align_face(
                photo, faces[centre_most([f.box for f in faces], photo.shape)].landmarks
            ).image
            aligned_ok[i] = True
    np.savez(cache, aligned=aligned, aligned_ok=aligned_ok)
    return aligned, aligned_ok


def embed(encoder, images, batch=64):
    out = []
    for start in range(0, len(images), batch):
        out.append(encoder(images[start : start + batch].astype(np.float32) / 255.0)["embedding"].numpy())
    return np.concatenate(out)


def accuracy_report(distances, same, valid):
    """10-fold accuracy (threshold from the other 9 folds), the overall best threshold and its accuracy.

    Invalid pairs (a photo without a detection) count as wrong.
    """
    candidates = np.arange(0.2, 2.0, 0.005)

    def accuracy(threshold, index):
        return np.mean(((distances[index] < threshold) == same[index]) & valid[index])

    folds = np.array_split(np.arange(len(distances)), 10)
    fold_accuracies = []
    for k, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        best = candidates[np.argmax([accuracy(t, train) for t in candidates])]
        fold_accuracies.append(accuracy(best, test))
    everything = np.arange(len(distances))
    scores = np.array([accuracy(t, everything) for t in candidates])
    best = float(candidates[np.argmax(scores)])
    return float(np.mean(fold_accuracies)), float(np.std(fold_accuracies)), best, float(scores.max())


def main(argv):
    del argv
    from normalized_faces.encoders import facenet, get_encoder

    people, split = lfw_split.load_split(FLAGS.lfw)
    names = split["train"] + split["validation"] + split["other"]
    pairs = lfw_split.sample_pairs(people, names, FLAGS.pairs, FLAGS.seed)
    paths = sorted({str(p) for a, b, _ in pairs for p in (a, b)})
    index = {p: i for i, p in enumerate(paths)}
    print(
        f"{len(pairs)} pairs ({sum(s for *_, s in pairs)} same-person) over {len(paths)} photos of {len(names)} non-test LFW people"
    )
    cache = pathlib.Path(FLAGS.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.time()
    aligned, native, aligned_ok, native_ok, framing = detect_all(
        paths, cache / f"detections_{FLAGS.pairs}_{FLAGS.seed}.npz"
    )
    print(
        f"detection: dlib found {aligned_ok.sum()}/{len(paths)}, MTCNN {native_ok.sum()}/{len(paths)} ({time.time() - start:.0f} s)"
    )
    hog_ok = aligned_ok.sum()
    aligned, aligned_ok = cnn_fallback(
        paths, aligned, aligned_ok, cache / f"cnn_fallback_{FLAGS.pairs}_{FLAGS.seed}.npz"
    )
    print(
        f"dlib's CNN detector, where HOG found none: {aligned_ok.sum() - hog_ok} more; {(~aligned_ok).sum()} photos without a face"
    )
    measured = np.nanmean(framing, axis=0)
    print(
        f"measured framing (MTCNN box + {FLAGS.margin} px margin vs the 68-landmark box): dx {measured[0]:+.4f} dy {measured[1]:+.4f} "
        f"sx {measured[2]:.4f} sy {measured[3]:.4f} (spread {np.nanstd(framing, axis=0).round(3).tolist()}, "
        f"{np.isfinite(framing[:, 0]).sum()} photos)"
    )
    print(f"facenet.FRAMING in use: {facenet.FRAMING}")
    variants = {
        "native (MTCNN + margin)": (get_encoder("facenet", native_input=True), native, native_ok),
        f"aligned, FRAMING {tuple(round(v, 3) for v in facenet.FRAMING)}": (
            get_encoder("facenet"),
            aligned,
            aligned_ok,
        ),
        "aligned, square 1.25 (before)": (get_encoder("facenet", framing=(0.0, 0.0, 1.25, 1.25)), aligned, aligned_ok),
    }
    a = np.array([index[str(p)] for p, _, _ in pairs])
    b = np.array([index[str(p)] for _, p, _ in pairs])
    same = np.array([s for *_, s in pairs])
    print(
        "\naccuracy over all pairs (a pair with an undetected photo counts as an error); last column: over detected pairs only"
    )
    print(
        f"{'framing':<42} {'10-fold accuracy':>18} {'best threshold':>15} {'accuracy there':>15} {'pairs lost':>10} {'detected only':>14}"
    )
    for name, (encoder, images, ok) in variants.items():
        started = time.time()
        embeddings = embed(encoder, images)
        distances = ((embeddings[a] - embeddings[b]) ** 2).sum(-1)
        valid = ok[a] & ok[b]
        mean, std, threshold, at_best = accuracy_report(distances, same, valid)
        detected_only = np.mean((distances[valid] < threshold) == same[valid])
        print(
            f"{name:<42} {100 * mean:>11.2f} +- {100 * std:.2f} {threshold:>15.3f} {100 * at_best:>14.2f}% {(~valid).sum():>10d} "
            f"{100 * detected_only:>13.2f}%   ({len(images) / (time.time() - started):.0f} photos/s)",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
