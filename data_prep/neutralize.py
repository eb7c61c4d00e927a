"""Beyond the paper: photos rejected only for their expression, edited towards neutral and kept.

Data prep drops photos that smile or open the mouth (the paper's model is trained on neutral
faces). With `--neutralize_with=EXPORT` (a flow VAE exported from a `--method=fvae` run) such a
photo is instead edited towards neutral by the flow VAE (Yeh et al.'s Algorithm 1 at full
strength, or --neutralize_strength: the flow moves the photo's own pixels, so its detail stays),
its landmarks found again on the edited crop, and kept if it then passes every filter; otherwise
it is rejected for the expression it still shows, with "after neutralizing" in the detail.

Only the expression filters decide: a photo that also fails another filter (blur, pose, glasses...)
is rejected for that, unedited. And an edit that moved the head is rejected whatever the filters
say (neutralize_moved_head): a flow that folds the whole face, or tears the mouth, can leave
landmarks that pass the expression filters (README, the w100 probe).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from data_prep import filters
from normalized_faces import expressions

# The filters' reasons an edit towards neutral can remove.
EXPRESSION_REASONS = ("mouth_open", "smiling")

# Default of --neutralize_max_head_shift: the most an edit may move the head-bound landmarks
# (landmarks.pose_distance, px at data prep's 224 px crop), found again by dlib on the edit. dlib
# alone, finding them again on the unedited crops of the 196 validation photos that smile or open
# the mouth, puts them 1.0 px away at the median and 2.3 px at the 99th percentile
# (experiments/fvae_probe.py, probe_neutralize.json); an edit that folds the face (the w100 probe)
# moves them 4.0 px at the median.
MAX_HEAD_SHIFT = 3.0


def without_expression_filters(thresholds: filters.FilterThresholds) -> filters.FilterThresholds:
    """The same thresholds with the expression filters open."""
    return dataclasses.replace(thresholds, max_mouth_open=float("inf"), max_smile=float("inf"))


class Neutralizer:
    """A flow VAE SavedModel (export/flow_vae.py): aligned face crop -> the same face, neutral.

    Args:
      export_dir: the export (a SavedModel, or a folder of numbered versions: the newest is used).
      strength: the edit's step scaled by this (1: the whole step to neutral).
    Raises:
      FileNotFoundError: no SavedModel there; ValueError: a SavedModel of another method.
    """

    def __init__(self, export_dir, strength: float = 1.0):
        import tensorflow as tf

        from normalized_faces import inference

        path = inference.latest_version(export_dir)
        metadata_path = pathlib.Path(path) / "assets.extra" / "normalized_faces.json"
        method = json.loads(metadata_path.read_text()).get("method") if metadata_path.exists() else None
        if method != "fvae":
            raise ValueError(
                f"--neutralize_with={export_dir}: {path} is not a flow VAE export (method {method!r}); "
                "export a --method=fvae run (python -m export.saved_model --model_dir=RUN)"
            )
        self.path, self.strength = path, float(strength)
        self._edit = tf.saved_model.load(str(path)).signatures["serving_default"]

    def __call__(self, aligned_image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """aligned_image [S, S, 3] uint8 with its [68, 2] landmarks -> the edited crop [S, S, 3] uint8."""
        import tensorflow as tf

        source = expressions.LABELS.index(expressions.label(np.asarray(landmarks)))
        result = self._edit(
            images=tf.constant(aligned_image[None].astype(np.float32) / 255.0),
            source_label=tf.constant([source], tf.int32),
            target_label=tf.constant([expressions.LABELS.index("neutral")], tf.int32),
            strength=tf.constant([self.strength], tf.float32),
        )
        return np.clip(np.round(result["edited"].numpy()[0] * 255.0), 0, 255).astype(np.uint8)
