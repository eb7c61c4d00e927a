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
--mode=photos skips 5 and 7: one record per photo that passed the filters, its texture registered
to the mean landmarks (the label-free variant, --method=wang2019, trains on these).

Runs locally over all cores by default (Beam's DirectRunner engine, FnApiRunner). Any other runner takes Beam's own
options after the flags, e.g. --runner=DataflowRunner --project=... --region=...
--temp_location=gs://... (see README). Every input ends in exactly one place: a record (as a
member of its identity's average) or rejected.jsonl with its reason.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from data_prep import job, stages  # noqa: E402
from normalized_faces import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "input",
    None,
    "A folder <root>/<identity>/<photo> or a manifest (.csv / .jsonl) with path, identity[, landmarks]; several, "
    "comma-separated, are read as one (identities must not repeat across them). With --min_photos_per_identity=1 "
    "an identity with one photo (a studio set's) is kept when that photo passes every filter.",
)
flags.DEFINE_string(
    "output_dir",
    None,
    "Where records, rejected.jsonl, metadata.json and preview.png go (local or any Beam filesystem).",
)
# Every PrepConfig field (filter thresholds included) is a flag, with its default and help (data_prep/stages.py).
for _name in config_flags.define_flags(stages.PrepConfig()):
    flags.declare_key_flag(_name)  # listed by --help, not only --helpfull
flags.DEFINE_integer(
    "num_shards",
    4,
    "TFRecord shards per split for the averages (morphs are written a shard per worker bundle, without holding them in memory).",
)
flags.DEFINE_integer("preview_count", 8, "Averages and morphs shown in preview.png.")
flags.mark_flags_as_required(["input", "output_dir"])


def config_from_flags() -> stages.PrepConfig:
    return config_flags.replace_nested(stages.PrepConfig(), **config_flags.overrides_from_flags(stages.PrepConfig()))


def main(argv):
    beam_args = argv[1:]
    logging.getLogger().setLevel(logging.INFO)
    flag_values = {flag.name: flag.value for flag in FLAGS.get_flags_for_module(__name__)}
    summary = job.run(
        FLAGS.input,
        FLAGS.output_dir,
        config_from_flags(),
        beam_args,
        FLAGS.num_shards,
        FLAGS.preview_count,
        flag_values,
    )
    job.print_summary(summary, FLAGS.output_dir)


def _parse_known(argv):
    # absl takes its own flags; everything else (--runner, --project, ...) goes to Beam.
    return FLAGS(argv, known_only=True)


if __name__ == "__main__":
    from normalized_faces.config_flags import run_command

    run_command(main, flags_parser=_parse_known)
