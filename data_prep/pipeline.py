"""Data prep: photos -> TFRecords of averaged identities and random morphs (Apache Beam).

    python -m data_prep.pipeline --input=PHOTOS_OR_MANIFEST --output_dir=OUT [--num_morphs=N] [Beam options]

Stages (every constant a flag; defaults are the paper's where it states one):
  1 read + decode   EXIF orientation applied; grey/RGBA/16-bit/CMYK converted; empty, corrupt,
                    non-image, tiny and decompression-bomb files rejected
  2 detect          dlib HOG (--detector=cnn for dlib's CNN) + 68 landmarks; --multiple_faces
                    decides between several faces; manifest landmarks skip this stage
  3 align           undo roll, eyes --interocular px apart (55), --size crop (224)
  4 filter          head pose, mouth open, smile, eyes closed, blur, monochrome (--max_yaw ...)
  5 average         identities with >= --min_photos_per_identity (3) photos: average landmarks,
                    warp each photo to them, average pixels
  6 decompose       global mean landmarks; texture = average warped to them
  7 morph           --num_morphs (1M) morphs: seed A, B among A's --neighbours (200) nearest,
                    weights ~ U[0, 1], Poisson compositing onto A's background, warp
  8 write           OUT/{train,validation}-SSSSS-of-NNNNN.tfrecord (split by identity),
                    OUT/rejected.jsonl, OUT/metadata.json, OUT/preview.png

Runs locally over all cores by default (Beam's DirectRunner engine, FnApiRunner). Any other runner takes Beam's own
options after the flags, e.g. --runner=DataflowRunner --project=... --region=...
--temp_location=gs://... (see README). Every input ends in exactly one place: a record (as a
member of its identity's average) or rejected.jsonl with its reason.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from data_prep import filters, job, stages  # noqa: E402

FLAGS = flags.FLAGS
_defaults = stages.PrepConfig()
_thresholds = filters.FilterThresholds()
flags.DEFINE_string("input", None, "A folder <root>/<identity>/<photo> or a manifest (.csv / .jsonl) with path, identity[, landmarks].")
flags.DEFINE_string("output_dir", None, "Where records, rejected.jsonl, metadata.json and preview.png go (local or any Beam filesystem).")
flags.DEFINE_integer("size", _defaults.size, "Aligned crop size in pixels (paper: 224).")
flags.DEFINE_float("interocular", _defaults.interocular, "Distance between the eye centres in the aligned crop (paper: 55).")
flags.DEFINE_integer("min_photos_per_identity", _defaults.min_photos_per_identity, "Identities with fewer usable photos are not averaged (paper: 3).")
flags.DEFINE_enum(
    "detector", _defaults.detector, ["hog", "cnn", "auto"],
    "dlib face detector: HOG (fast), CNN/MMOD (better on hard poses, slower), or auto (HOG, CNN where HOG finds no face).",
)
flags.DEFINE_integer("upsample", _defaults.upsample, "Times the detector upsamples the photo (finds smaller faces, slower).")
flags.DEFINE_enum("multiple_faces", _defaults.multiple_faces, ["largest", "reject"], "Photos with several faces: keep the largest, or reject the photo.")
flags.DEFINE_float("min_face_interocular", _defaults.min_face_interocular, "Reject faces whose eyes are closer than this in the photo (px): too small.")
flags.DEFINE_integer("max_pixels", _defaults.max_pixels, "Reject images whose header claims more pixels (decompression-bomb guard).")
flags.DEFINE_integer("min_side", _defaults.min_side, "Reject images smaller than this on a side (px).")
flags.DEFINE_bool("filters", _defaults.apply_filters, "Apply the frontal/neutral/sharp/colour filters (stage 4).")
flags.DEFINE_float("max_yaw", _thresholds.max_yaw, "Filter: largest |yaw| in degrees (head pose from landmarks).")
flags.DEFINE_float("max_pitch", _thresholds.max_pitch, "Filter: largest |pitch| in degrees.")
flags.DEFINE_float("max_mouth_open", _thresholds.max_mouth_open, "Filter: largest inner-lip gap / mouth width.")
flags.DEFINE_float("max_smile", _thresholds.max_smile, "Filter: largest mouth-corner lift / mouth width.")
flags.DEFINE_float("min_eye_open", _thresholds.min_eye_open, "Filter: smallest eye aspect ratio (closed eyes below ~0.15).")
flags.DEFINE_float("min_sharpness", _thresholds.min_sharpness, "Filter: smallest variance of the Laplacian of the face at the photo's resolution (blur).")
flags.DEFINE_float("min_chroma", _thresholds.min_chroma, "Filter: smallest mean chroma of the face (monochrome photos are ~0).")
flags.DEFINE_float("max_glasses", _thresholds.max_glasses, "Filter: largest nose-bridge edge strength / the face's (eyeglasses; clear frames score > 1).")
flags.DEFINE_integer("num_morphs", _defaults.num_morphs, "Random morphs to make (paper: 1,000,000); split between train and validation by size.")
flags.DEFINE_integer("neighbours", _defaults.neighbours, "A morph's partner is one of the seed's k nearest faces (paper: 200).")
flags.DEFINE_float("texture_weight", _defaults.texture_weight, "Neighbour distance mix: 0 = landmarks only, 1 = texture only (not stated in the paper).")
flags.DEFINE_float("composite_blur", _defaults.composite_blur, "Gaussian sigma (px) softening the compositing mask (the mean landmarks' hull).")
flags.DEFINE_float("validation_fraction", _defaults.validation_fraction, "Share of identities held out for validation.")
flags.DEFINE_integer("seed", _defaults.seed, "Seed of the morph plan: the same seed and inputs give the same records.")
flags.DEFINE_integer("num_shards", 4, "TFRecord shards per split for the averages (morphs are written a shard per worker bundle, without holding them in memory).")
flags.DEFINE_integer("preview_count", 8, "Averages and morphs shown in preview.png.")
flags.mark_flags_as_required(["input", "output_dir"])


def config_from_flags() -> stages.PrepConfig:
    return stages.PrepConfig(
        size=FLAGS.size,
        interocular=FLAGS.interocular,
        min_photos_per_identity=FLAGS.min_photos_per_identity,
        detector=FLAGS.detector,
        upsample=FLAGS.upsample,
        multiple_faces=FLAGS.multiple_faces,
        min_face_interocular=FLAGS.min_face_interocular,
        max_pixels=FLAGS.max_pixels,
        min_side=FLAGS.min_side,
        thresholds=filters.FilterThresholds(
            max_yaw=FLAGS.max_yaw, max_pitch=FLAGS.max_pitch, max_mouth_open=FLAGS.max_mouth_open, max_smile=FLAGS.max_smile,
            min_eye_open=FLAGS.min_eye_open, min_sharpness=FLAGS.min_sharpness, min_chroma=FLAGS.min_chroma, max_glasses=FLAGS.max_glasses,
        ),
        apply_filters=FLAGS.filters,
        num_morphs=FLAGS.num_morphs,
        neighbours=FLAGS.neighbours,
        texture_weight=FLAGS.texture_weight,
        composite_blur=FLAGS.composite_blur,
        validation_fraction=FLAGS.validation_fraction,
        seed=FLAGS.seed,
    )


def main(argv):
    beam_args = argv[1:]
    logging.getLogger().setLevel(logging.INFO)
    flag_values = {flag.name: flag.value for flag in FLAGS.get_flags_for_module(__name__)}
    summary = job.run(FLAGS.input, FLAGS.output_dir, config_from_flags(), beam_args, FLAGS.num_shards, FLAGS.preview_count, flag_values)
    job.print_summary(summary, FLAGS.output_dir)


def _parse_known(argv):
    # absl takes its own flags; everything else (--runner, --project, ...) goes to Beam.
    return FLAGS(argv, known_only=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_known)
