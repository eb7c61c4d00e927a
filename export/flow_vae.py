"""SavedModel export of a flow VAE run (train_main.py --method=fvae): expression editing for TF Serving.

Called by export.saved_model.export for such runs; writes EXPORTS/N/ with
  signatures
    serving_default (edit)  images [B, S, S, 3] float32 in [0, 1], aligned face crops of any side S;
                            source_label, target_label [B] int32, indices into
                            normalized_faces.expressions.LABELS (the photo's own label from its
                            landmarks, expressions.label); strength [B] float32 (1: the full
                            step, editing.expression_directions, of the kind editing defaults to;
                            the flow relative to the unedited photo's, as editing.ExpressionEditor)
                            -> edited [B, S, S, 3] float32 in [0, 1] (the flow applied at S),
                               flow [B, 128, 128, 2] (x, y) normalized, mask [B, 128, 128, 1]
    encode                  images -> latent [B, 4, 4, D]
    decode                  images, latent -> output [B, 128, 128, 3] in [0, 1], flow, mask
  assets.extra/normalized_faces.json  method, labels, the directions' kind and pairs, the source checkpoint
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

from normalized_faces import expressions, warp
from normalized_faces.fvae import editing
from normalized_faces.fvae import model as fvae


class EditingModule(tf.Module):
    def __init__(self, model, directions: dict, relative: bool = True):
        super().__init__()
        self.model = model
        self.relative = relative
        # [source label, target label, h, w, D] in expressions.LABELS order.
        self.direction_table = tf.constant(directions["directions"].astype(np.float32))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
            tf.TensorSpec([None], tf.int32, name="source_label"),
            tf.TensorSpec([None], tf.int32, name="target_label"),
            tf.TensorSpec([None], tf.float32, name="strength"),
        ]
    )
    def edit(self, images, source_label, target_label, strength):
        small = editing.to_model_input(images * 255.0)
        latent = self.model.encode(small)[0]
        direction = tf.gather_nd(self.direction_table, tf.stack([source_label, target_label], axis=-1))
        out = self.model.decode(small, fvae.edit_latents(latent, strength[:, None, None, None] * direction, 1)[0])
        flow = out["flow"]
        if self.relative:
            flow -= self.model.decode(small, latent, with_mask=False)["flow"]
        size = tf.shape(images)[1:3]
        moved = fvae.apply_flow(images, tf.image.resize(flow, size, method="bilinear"))
        return {"edited": tf.clip_by_value(moved, 0.0, 1.0), "flow": flow, "mask": out["mask"]}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def encode(self, images):
        return {"latent": self.model.encode(editing.to_model_input(images * 255.0))[0]}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
            tf.TensorSpec([None, fvae.LATENT_SIZE, fvae.LATENT_SIZE, None], tf.float32, name="latent"),
        ]
    )
    def decode(self, images, latent):
        out = self.model.decode(editing.to_model_input(images * 255.0), latent)
        result = {"output": (tf.clip_by_value(out["output"], -1.0, 1.0) + 1.0) / 2.0, "mask": out["mask"]}
        if "flow" in out:
            result["flow"] = out["flow"]
        return result


def export_flow_vae(model, model_dir: pathlib.Path, staging: pathlib.Path) -> None:
    """Writes the SavedModel and its metadata into `staging` (export.saved_model makes it atomic)."""
    directions = editing.directions_for_run(model_dir, model)
    module = EditingModule(model, directions)
    with warp.portable_ops():  # TF ops only: TF Serving cannot load this package's fused kernels
        tf.saved_model.save(
            module,
            str(staging),
            signatures={"serving_default": module.edit, "encode": module.encode, "decode": module.decode},
        )
    metadata = {
        "method": "fvae",
        "model_dir": str(pathlib.Path(model_dir).resolve()),
        "checkpoint": tf.train.latest_checkpoint(str(pathlib.Path(model_dir) / "checkpoints")),
        "labels": list(expressions.LABELS),
        "labels_with_photos": [
            label for label, count in zip(expressions.LABELS, directions["label_photos"].tolist()) if count
        ],
        "directions": directions["kind"],
        "direction_pairs": directions["pairs"].tolist(),  # [source, target]; 0: the label means' step
        "relative_flow": module.relative,
        "image_size": fvae.IMAGE_SIZE,
    }
    (staging / "assets.extra").mkdir(parents=True, exist_ok=True)
    (staging / "assets.extra" / "normalized_faces.json").write_text(json.dumps(metadata, indent=2))
