"""Editing with a trained flow VAE: Algorithm 1 (towards another expression), Algorithm 2
(interpolation between two photos) and flow upsampling (Sec. 4.3: the 128 x 128 flow, being in
normalized coordinates, moves the pixels of the aligned crop or of the full photo at their own
resolution).

    editor = ExpressionEditor.from_run(RUN)
    result = editor.edit(aligned_faces, landmarks, to="neutral", steps=3)   # aligned 224 crops, uint8

Mean latents per expression label (expressions.LABELS but "other") come from the run's training
photos: RUN/mean_latents.npz, written at the end of training (or here, on first use, from the
run's data_dir).
"""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np
import tensorflow as tf

from normalized_faces import expressions
from normalized_faces import landmarks as lm
from normalized_faces.config import RUN_CONFIG_FILE, TrainConfig
from normalized_faces.fvae import losses
from normalized_faces.fvae import model as fvae

MEAN_LATENTS_FILE = "mean_latents.npz"
EDIT_TARGETS = tuple(label for label in expressions.LABELS if label != "other")
PASTE_FEATHER = 0.08  # of the aligned crop's side: the pasted edit fades out over this band


def to_model_input(aligned_faces) -> tf.Tensor:
    """Aligned crops [B, S, S, 3] uint8 (any S) -> [B, 128, 128, 3] in [-1, 1]."""
    images = tf.image.resize(tf.cast(aligned_faces, tf.float32), [fvae.IMAGE_SIZE] * 2, antialias=True)
    return images / 127.5 - 1.0


def apply_normalized_flow(images, flow):
    """uint8 or float images [B, S, S, C] moved by a normalized flow [B, s, s, 2] of any side s."""
    size = images.shape[1]
    moved = fvae.apply_flow(tf.cast(images, tf.float32), fvae.upsample_flow(flow, size, size))
    return moved.numpy()


def mean_latents_for_run(model_dir, model) -> dict:
    """label -> mean latent for a training run: RUN/mean_latents.npz, computed and written when missing."""
    from normalized_faces.fvae import data as fvae_data

    path = pathlib.Path(model_dir) / MEAN_LATENTS_FILE
    if not path.exists():
        config = TrainConfig.from_json(json.loads((pathlib.Path(model_dir) / RUN_CONFIG_FILE).read_text()))
        data_dir = config.trainer.data_dir
        means = fvae_data.mean_latents(model, fvae_data.load_photos(data_dir, "train"))
        np.savez(path, **means)
    with np.load(path) as arrays:
        return {label: arrays[label] for label in arrays.files}


class ExpressionEditor:
    """A flow VAE and its mean latents per expression label."""

    def __init__(self, model, mean_latents: dict):
        missing = [label for label in EDIT_TARGETS if label not in mean_latents]
        if missing:
            raise ValueError(f"the model's mean latents lack {missing}: its training photos had none with those labels")
        if model.output_kind != "flow":
            raise ValueError("editing needs the flow model (fvae_output=flow); the rgb model is the paper's baseline")
        self.model, self.mean_latents = model, mean_latents
        self.overall_mean = np.mean([mean_latents[label] for label in EDIT_TARGETS], axis=0)

    @classmethod
    def from_run(cls, model_dir) -> "ExpressionEditor":
        from normalized_faces import inference

        model = inference.restore_training_model(model_dir)
        return cls(model, mean_latents_for_run(model_dir, model))

    def source_mean(self, landmarks) -> np.ndarray:
        """Z_source of Algorithm 1: the mean latent of the photo's own expression label (the mean of
        the labels' means for a face labelled "other")."""
        return self.mean_latents.get(expressions.label(np.asarray(landmarks)), self.overall_mean)

    def edit(self, aligned_faces, landmarks, to: str, steps: int = 1, strength: float = 1.0) -> dict:
        """Algorithm 1 on aligned crops [B, S, S, 3] uint8 with their landmarks [B, 68, 2].

        Returns {"faces": [K, B, S, S, 3] uint8 (step K: the full edit), "flows": [K, B, 128, 128, 2]}.
        `strength` scales the step from Z_source to Z_target (1: the paper's; > 1 exaggerates).
        """
        if to not in EDIT_TARGETS:
            raise ValueError(f"--to must be one of {EDIT_TARGETS}, got {to!r}")
        images = to_model_input(aligned_faces)
        latent = self.model.encode(images)[0]
        target = self.mean_latents[to]
        edits = []
        for z, points in zip(tf.unstack(latent), landmarks):
            source = self.source_mean(points)
            edits.append(fvae.edit_latents(z[None], source, source + strength * (target - source), steps)[:, 0])
        edits = tf.stack(edits, axis=1)  # [K, B, 4, 4, D]
        faces, flows = [], []
        for step_latents in tf.unstack(edits):
            flow = self.model.decode(images, step_latents)["flow"]
            flows.append(flow.numpy())
            faces.append(np.clip(np.round(apply_normalized_flow(aligned_faces, flow)), 0, 255).astype(np.uint8))
        return {"faces": np.stack(faces), "flows": np.stack(flows)}

    def interpolate(self, face_a, face_b, steps: int) -> np.ndarray:
        """Algorithm 2 between two aligned crops [S, S, 3] uint8: for t = 0, 1/steps, .., 1 the
        latent (1 - t) Z_a + t Z_b decoded with each photo, each photo warped by its flow, blended by
        their normalized confidence masks. Returns [steps + 1, S, S, 3] uint8."""
        images = to_model_input(np.stack([face_a, face_b]))
        latents = self.model.encode(images)[0]
        originals = np.stack([face_a, face_b])
        frames = []
        for t in np.linspace(0.0, 1.0, steps + 1):
            z = (1 - t) * latents[0] + t * latents[1]
            out = self.model.decode(images, tf.stack([z, z]))
            warped = apply_normalized_flow(originals, out["flow"])  # [2, S, S, 3]
            size = originals.shape[1]
            masks = tf.image.resize(out["mask"], [size, size])  # [2, S, S, 1]
            weights = losses.blend_weights(masks[:, None])[:, 0].numpy()
            frames.append(np.clip(np.round((weights * warped).sum(axis=0)), 0, 255).astype(np.uint8))
        return np.stack(frames)


def paste_into_photo(photo: np.ndarray, alignment_matrix: np.ndarray, flow: np.ndarray, size: int = None) -> np.ndarray:
    """The photo with a normalized flow [s, s, 2] applied at the photo's own resolution inside the
    aligned crop's footprint, feathered out towards the crop's border (Sec. 4.3's flow upsampling,
    then pasted back). alignment_matrix maps the photo to the size x size aligned crop (data prep's
    224 by default).

    A photo pixel p sits at a = M p in the aligned frame; the edit moves it to take the pixel at
    a + f(a), i.e. the photo's pixel at M^-1 (a + f(a))."""
    photo = np.asarray(photo)
    height, width = photo.shape[:2]
    inverse = cv2.invertAffineTransform(alignment_matrix)
    size = size or lm.ALIGNED_SIZE
    flow_px = cv2.resize(np.asarray(flow, np.float32), (size, size), interpolation=cv2.INTER_LINEAR) * (size - 1) / 2.0
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    footprint = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.maximum(np.floor(footprint.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(footprint.max(0)).astype(int) + 1, [width, height])
    if x1 <= x0 or y1 <= y0:
        return photo.copy()
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ax = alignment_matrix[0, 0] * xs + alignment_matrix[0, 1] * ys + alignment_matrix[0, 2]
    ay = alignment_matrix[1, 0] * xs + alignment_matrix[1, 1] * ys + alignment_matrix[1, 2]
    ax, ay = ax.astype(np.float32), ay.astype(np.float32)
    fx, fy = (
        cv2.remap(np.ascontiguousarray(flow_px[..., i]), ax, ay, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        for i in range(2)
    )
    sx = inverse[0, 0] * (ax + fx) + inverse[0, 1] * (ay + fy) + inverse[0, 2]
    sy = inverse[1, 0] * (ax + fx) + inverse[1, 1] * (ay + fy) + inverse[1, 2]
    moved = cv2.remap(
        photo, sx.astype(np.float32), sy.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    band = PASTE_FEATHER * size
    inside = np.minimum.reduce([ax, ay, size - 1 - ax, size - 1 - ay])
    weight = np.clip(inside / band, 0.0, 1.0)[..., None]
    result = photo.astype(np.float32).copy()
    region = result[y0:y1, x0:x1]
    result[y0:y1, x0:x1] = weight * moved + (1 - weight) * region
    return np.clip(np.round(result), 0, 255).astype(photo.dtype)
