"""Editing with a trained flow VAE: Algorithm 1 (towards another expression), Algorithm 2
(interpolation between two photos) and flow upsampling (Sec. 4.3: the 128 x 128 flow, being in
normalized coordinates, moves the pixels of the aligned crop or of the full photo at their own
resolution).

    editor = ExpressionEditor.from_run(RUN)
    result = editor.edit(aligned_faces, landmarks, to="neutral", steps=3)   # aligned 224 crops, uint8

The latent step from one expression label to another (expression_directions: the paper's label
means, or the mean step between pose-alike photos of one person) comes from the run's training
photos: RUN/expression_directions_<kind>.npz, written on first use (and after more training) from the
run's data_dir.
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

DIRECTION_KINDS = ("paired", "label_means")
EDIT_TARGETS = tuple(label for label in expressions.LABELS if label != "other")
# Paired directions: only pairs of one person's photos whose heads lie this close (landmarks.pose_distance,
# px at the model's 128; the flow VAE's training pairs use the same measure), and at least this many of
# them, else the label means' difference stands in for that (source, target) pair of labels.
PAIRED_MAX_POSE_DISTANCE = 2.0
PAIRED_MIN_PAIRS = 10
PASTE_FEATHER = 0.08  # of the aligned crop's side: the pasted edit fades out over this band


def directions_file(kind: str) -> str:
    return f"expression_directions_{kind}.npz"


def to_model_input(aligned_faces) -> tf.Tensor:
    """Aligned crops [B, S, S, 3] uint8 (any S) -> [B, 128, 128, 3] in [-1, 1]."""
    images = tf.image.resize(tf.cast(aligned_faces, tf.float32), [fvae.IMAGE_SIZE] * 2, antialias=True)
    return images / 127.5 - 1.0


def apply_normalized_flow(images, flow):
    """uint8 or float images [B, S, S, C] moved by a normalized flow [B, s, s, 2] of any side s."""
    size = images.shape[1]
    moved = fvae.apply_flow(tf.cast(images, tf.float32), fvae.upsample_flow(flow, size, size))
    return moved.numpy()


def expression_directions(
    latents: np.ndarray,
    photos,
    kind: str = "paired",
    max_pose_distance: float = PAIRED_MAX_POSE_DISTANCE,
    min_pairs: int = PAIRED_MIN_PAIRS,
) -> dict:
    """Algorithm 1's latent step from each expression label to each other, from training photos
    (fvae.data.PhotoSet) and their latents [N, h, w, D].

    kind="label_means" is the paper's: Z_target - Z_source, the mean latents of all photos with
    those labels ("other" as a source: the mean of the other labels' means). On MULTI-PIE those
    means are over the same people in the same poses; on LFW they are not, and the smiling photos'
    heads sit elsewhere on average (the label means' head landmarks differ by 1.8 px at 128 px,
    their mouths by 2.6), so that step moves the head as well. kind="paired": the mean of
    Z(b) - Z(a) over pairs of one person's photos, a with the source label and b with the target's,
    whose heads are within max_pose_distance (what stays is the expression); a (source, target)
    with fewer than min_pairs such pairs falls back to the label means' step.

    Returns {"directions": [L, L, h, w, D] float32 (row: source, column: target, in
    expressions.LABELS order; zero on the diagonal), "pairs": [L, L] the pairs behind each paired
    step (0: the label means' step), "label_photos": [L] photos per label, "kind"}.
    """
    if kind not in DIRECTION_KINDS:
        raise ValueError(f"directions must be one of {DIRECTION_KINDS}, got {kind!r}")
    count = len(expressions.LABELS)
    label_ids = np.array([expressions.LABELS.index(label) for label in photos.labels])
    label_photos = np.bincount(label_ids, minlength=count)
    means = np.stack(
        [latents[label_ids == i].mean(0) if label_photos[i] else np.zeros(latents.shape[1:]) for i in range(count)]
    )
    targets_with_photos = [expressions.LABELS.index(label) for label in EDIT_TARGETS]
    targets_with_photos = [i for i in targets_with_photos if label_photos[i]]
    if targets_with_photos:
        means[expressions.LABELS.index("other")] = means[targets_with_photos].mean(0)
    directions = means[None, :] - means[:, None]  # [source, target]
    pairs = np.zeros([count, count], np.int64)
    if kind == "paired":
        sums = np.zeros_like(directions)
        for indices in photos.people_with_pairs().values():
            head = photos.landmarks[indices][:, lm.POSE_LANDMARKS]  # [n, P, 2]
            distance = np.linalg.norm(head[:, None] - head[None], axis=-1).mean(-1)  # [n, n]
            ids = label_ids[indices]
            for source in np.unique(ids):
                for target in np.unique(ids):
                    if source == target:
                        continue
                    alike = distance[np.ix_(ids == source, ids == target)] <= max_pose_distance  # [a, b]
                    if alike.any():
                        # sum over alike (a, b) of Z(b) - Z(a)
                        to_b = np.tensordot(alike.sum(0), latents[indices[ids == target]], axes=1)
                        from_a = np.tensordot(alike.sum(1), latents[indices[ids == source]], axes=1)
                        sums[source, target] += to_b - from_a
                        pairs[source, target] += int(alike.sum())
        enough = pairs >= min_pairs
        paired = sums / np.maximum(pairs, 1).reshape(count, count, *[1] * (sums.ndim - 2))
        directions = np.where(enough.reshape(count, count, *[1] * (sums.ndim - 2)), paired, directions)
        pairs = np.where(enough, pairs, 0)
    directions[np.arange(count), np.arange(count)] = 0.0
    return {"directions": directions.astype(np.float32), "pairs": pairs, "label_photos": label_photos, "kind": kind}


def directions_for_run(model_dir, model, kind: str = "paired") -> dict:
    """expression_directions for a training run from its training photos and its latest checkpoint
    (the model restored from it): RUN/expression_directions_<kind>.npz, computed and written when
    missing or made with an older checkpoint (a resumed run)."""
    from normalized_faces.fvae import data as fvae_data

    model_dir = pathlib.Path(model_dir)
    path = model_dir / directions_file(kind)
    checkpoint = pathlib.Path(tf.train.latest_checkpoint(str(model_dir / "checkpoints")) or "").name
    if path.exists():
        with np.load(path) as arrays:
            table = {name: arrays[name] for name in arrays.files}
        if str(table.get("checkpoint", "")) == checkpoint:
            table["kind"] = str(table["kind"])
            return table
    config = TrainConfig.from_json(json.loads((model_dir / RUN_CONFIG_FILE).read_text()))
    photos = fvae_data.load_photos(config.trainer.data_dir, "train")
    table = expression_directions(fvae_data.photo_latents(model, photos), photos, kind)
    np.savez(path, checkpoint=checkpoint, **table)
    return table


class ExpressionEditor:
    """A flow VAE and its expression directions (expression_directions).

    relative=True (the default) applies g(S, Z_i) - g(S, Z(S)): the flow the latent step adds to the
    one the model draws for the photo unedited. The paper applies g(S, Z_i) itself, which presumes
    g(S, Z(S)) moves nothing; on LFW it moves pixels by several px (the landmark probe: 3.3 px), a
    pattern every edit would then carry. Relative, step 0 is the photo itself.
    """

    def __init__(self, model, directions: dict, relative: bool = True):
        photos = dict(zip(expressions.LABELS, directions["label_photos"]))
        missing = [label for label in EDIT_TARGETS if not photos.get(label)]
        if missing:
            raise ValueError(
                f"the model's expression directions lack {missing}: its training photos had none with those labels"
            )
        if model.output_kind != "flow":
            raise ValueError("editing needs the flow model (fvae_output=flow); the rgb model is the paper's baseline")
        self.model, self.directions, self.relative = model, directions, relative

    @classmethod
    def from_run(cls, model_dir, directions: str = "paired", relative: bool = True) -> "ExpressionEditor":
        from normalized_faces import inference

        model = inference.restore_training_model(model_dir)
        return cls(model, directions_for_run(model_dir, model, directions), relative)

    def direction(self, landmarks, to: str) -> np.ndarray:
        """The latent step [h, w, D] from the photo's own expression label (from its landmarks) to `to`."""
        source = expressions.LABELS.index(expressions.label(np.asarray(landmarks)))
        return self.directions["directions"][source, expressions.LABELS.index(to)]

    def edit(self, aligned_faces, landmarks, to: str, steps: int = 1, strength: float = 1.0) -> dict:
        """Algorithm 1 on aligned crops [B, S, S, 3] uint8 with their landmarks [B, 68, 2].

        Returns {"faces": [K, B, S, S, 3] uint8 (step K: the full edit), "flows": [K, B, 128, 128, 2]}.
        `strength` scales the step from the photo's label to the target (1: the paper's; > 1 exaggerates).
        """
        if to not in EDIT_TARGETS:
            raise ValueError(f"--to must be one of {EDIT_TARGETS}, got {to!r}")
        images = to_model_input(aligned_faces)
        latent = self.model.encode(images)[0]
        direction = np.stack([strength * self.direction(points, to) for points in landmarks])
        edits = fvae.edit_latents(latent, direction, steps)  # [K, B, h, w, D]
        unedited = self.model.decode(images, latent, with_mask=False)["flow"] if self.relative else 0.0
        faces, flows = [], []
        for step_latents in tf.unstack(edits):
            flow = self.model.decode(images, step_latents, with_mask=False)["flow"] - unedited
            flows.append(flow.numpy())
            faces.append(np.clip(np.round(apply_normalized_flow(aligned_faces, flow)), 0, 255).astype(np.uint8))
        return {"faces": np.stack(faces), "flows": np.stack(flows)}

    def interpolate(self, face_a, face_b, steps: int) -> np.ndarray:
        """Algorithm 2 between two aligned crops [S, S, 3] uint8: for t = 0, 1/steps, .., 1 the
        latent (1 - t) Z_a + t Z_b decoded with each photo, each photo warped by its flow (relative:
        less the flow at its own latent, as in edit), blended by their normalized confidence masks.
        Returns [steps + 1, S, S, 3] uint8."""
        images = to_model_input(np.stack([face_a, face_b]))
        latents = self.model.encode(images)[0]
        unedited = self.model.decode(images, latents, with_mask=False)["flow"] if self.relative else 0.0
        originals = np.stack([face_a, face_b])
        frames = []
        for t in np.linspace(0.0, 1.0, steps + 1):
            z = (1 - t) * latents[0] + t * latents[1]
            out = self.model.decode(images, tf.stack([z, z]))
            warped = apply_normalized_flow(originals, out["flow"] - unedited)  # [2, S, S, 3]
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
