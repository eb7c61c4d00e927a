"""Data prep throughput: the per-photo stage against bare dlib, and morphs per second.

    python benchmarks/data_prep_bench.py [--photos_dir=../shared/faces/lfw10] [--morphs=20]
    python benchmarks/data_prep_bench.py --photos_dir=PHOTOS.csv --bare_photos=600 \
        --job_output_dir=/tmp/prep --job_morphs=6000

Per photo, on the same photos in one process (one core):
  bare dlib     decode (cv2) + dlib HOG detect + 68-point landmarks: the floor any pipeline pays
  our stage     data_prep's ProcessPhoto: read, decode by rule (EXIF, modes), detect, landmarks,
                align to 224, measure and apply the filters
and their ratio. Then morphs/s: plan neighbours, Poisson compositing, warp (make_morph).

With --job_output_dir, the whole Beam job (data_prep.job.run, the default engine: one worker process
per core) then runs on all the photos, and its per-stage timers are set against the bare dlib cost
measured above: photos per second per stage, the photo stages' CPU time per photo / bare dlib's,
and the job's wall-clock per photo / (bare dlib per photo / cores).
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

from data_prep import morph, stages  # noqa: E402
from normalized_faces import inputs  # noqa: E402
from normalized_faces import landmarks as lm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "photos_dir",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"),
    "Folder <identity>/<photo> of real photos.",
)
flags.DEFINE_integer("morphs", 20, "Morphs to time.")
flags.DEFINE_integer("bare_photos", 0, "Time the one-core comparison on this many photos, evenly spaced (0 = all).")
flags.DEFINE_string(
    "job_output_dir", None, "Also run the whole job on all the photos, writing here (emptied of earlier records)."
)
flags.DEFINE_integer("job_morphs", 2000, "Morphs the job makes (with --job_output_dir).")


def main(argv):
    del argv
    try:
        all_photos = inputs.list_inputs(FLAGS.photos_dir)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(
            f"{FLAGS.photos_dir}: {error}; pass --photos_dir=<root>/<identity>/<photo> or a manifest .csv"
        ) from None
    photos = all_photos
    if 0 < FLAGS.bare_photos < len(all_photos):
        photos = [all_photos[i] for i in np.linspace(0, len(all_photos) - 1, FLAGS.bare_photos).astype(int)]
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
    bare_ms = 1000 * bare / len(photos)

    rng = np.random.default_rng(0)
    mean = lm.template_landmarks()
    faces = [
        (rng.integers(0, 256, [224, 224, 3], dtype=np.uint8), lm.random_face_landmarks(rng, 1)[0]) for _ in range(8)
    ]
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
    print(
        f"morphs: {len(plans) / elapsed:.1f}/s one core ({1000 * elapsed / len(plans):.0f} ms each, of which Poisson compositing "
        f"{1000 * composite / len(plans):.0f} ms, {compositor.iterations} CG iterations); "
        f"1M morphs ~ {1e6 * elapsed / len(plans) / 3600:.0f} core-hours"
    )
    if FLAGS.job_output_dir:
        _run_job(FLAGS.photos_dir, len(all_photos), bare_ms)


PHOTO_STAGES = ("read_decode", "detect", "align_filter")


def _run_job(input_path, num_photos, bare_ms):
    """The whole job on every photo; its stage timers against bare dlib's `bare_ms` per photo."""
    from data_prep import job

    cores = os.cpu_count() or 1
    print(
        f"\nwhole job: {num_photos} photos, {FLAGS.job_morphs} morphs, default engine ({cores} worker processes) ...",
        flush=True,
    )
    summary = job.run(input_path, FLAGS.job_output_dir, stages.PrepConfig(num_morphs=FLAGS.job_morphs))
    speeds = summary.get("stage_speeds") or {}
    print(
        f"job wall-clock {summary['seconds']:.0f} s; accepted {summary['accepted']}, morphs written {summary['written_morphs']}"
    )
    print(f"  {'stage':<12} {'items':>7} {'CPU s':>8} {'/s per worker':>14} {'ms per item':>12}")
    for name, speed in speeds.items():
        per_item = 1000 * speed["cpu_seconds"] / max(speed["items"], 1)
        print(
            f"  {name:<12} {speed['items']:7d} {speed['cpu_seconds']:8.1f} {speed['per_second_per_worker']!s:>14} {per_item:12.1f}"
        )
    photo_ms = sum(1000 * speeds[name]["cpu_seconds"] / num_photos for name in PHOTO_STAGES if name in speeds)
    print(
        f"photo stages ({' + '.join(PHOTO_STAGES)}): {photo_ms:.1f} ms CPU per photo = "
        f"{photo_ms / bare_ms:.2f}x bare dlib's {bare_ms:.1f} ms (goal <= 1.25x)"
    )
    wall_ms = 1000 * summary["seconds"] / num_photos
    print(
        f"whole job wall-clock per photo: {wall_ms:.1f} ms = {wall_ms / (bare_ms / cores):.2f}x bare dlib on {cores} cores "
        f"({bare_ms / cores:.1f} ms; includes averaging, {summary['written_morphs']} morphs and writing)"
    )


if __name__ == "__main__":
    app.run(main)
