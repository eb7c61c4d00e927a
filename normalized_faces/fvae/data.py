"""The flow VAE's training pairs, from data prep's photo records (`--mode=photos` with the
expression filters opened: `--max_smile=inf --max_mouth_open=inf`).

Yeh et al. train on MULTI-PIE pairs (one person, one session, labelled expressions), which cannot
be had here. Instead: pairs (S, T) of two photos of one person, each data prep's aligned crop
resized to 128 x 128, labelled by expressions.label from its landmarks. As in the paper, S is
colour-transferred towards T (Reinhard et al.: per-channel mean and standard deviation matched in
CIE Lab), both are flipped together at random, and pixels are in [-1, 1].
"""

from __future__ import annotations

import collections
import dataclasses

import cv2
import numpy as np
import tensorflow as tf

from normalized_faces import data, expressions
from normalized_faces.fvae.model import IMAGE_SIZE
from normalized_faces.landmarks import convex_hull_mask, pose_distance


@dataclasses.dataclass
class PhotoSet:
    """Every photo of one split: images [N, S, S, 3] uint8, identities [N], labels [N] (expressions.LABELS),
    landmarks [N, 68, 2] (x, y) in the images' pixels."""

    images: np.ndarray
    identities: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray

    def people_with_pairs(self) -> dict:
        """identity -> indices of its photos, for people with two or more."""
        by_person = collections.defaultdict(list)
        for index, identity in enumerate(self.identities):
            by_person[identity].append(index)
        return {identity: np.array(indices) for identity, indices in by_person.items() if len(indices) >= 2}


def load_photos(data_dir, split: str, size: int = IMAGE_SIZE) -> PhotoSet:
    """Reads a split's photo records (kind "photo"), resizing each aligned crop to size x size and
    labelling its expression (landmarks scaled with it)."""
    images, identities, labels, landmarks = [], [], [], []
    for serialized in tf.data.TFRecordDataset(data.record_files(data_dir, split)):
        record = data.decode_record(serialized.numpy())
        if record.kind != "photo":
            raise ValueError(
                f"{data_dir}: a {record.kind!r} record; the flow VAE trains on single photos "
                "(data prep --mode=photos --max_smile=inf --max_mouth_open=inf)"
            )
        images.append(cv2.resize(record.image, (size, size), interpolation=cv2.INTER_AREA))
        identities.append(record.identity)
        labels.append(expressions.label(record.landmarks))
        # (0, 0) is the top-left pixel's centre (landmarks.py), so pixel edges, not centres, scale.
        scale = size / record.image.shape[0]
        landmarks.append((np.asarray(record.landmarks, np.float32) + 0.5) * scale - 0.5)
    if not images:
        raise ValueError(f"{data_dir}: no {split} records")
    return PhotoSet(np.stack(images), np.array(identities), np.array(labels), np.stack(landmarks))


def face_region(landmarks, size: int, margin: int = 2) -> np.ndarray:
    """float32 [size, size, 1]: 1 inside the convex hull of the 68 landmarks (brows to chin, grown by
    margin pixels), 0 elsewhere. The part of T the flow is asked to reproduce with
    --fvae_reconstruction_region=face."""
    region = convex_hull_mask(landmarks, size, size)
    if margin > 0:
        region = cv2.dilate(region, np.ones([2 * margin + 1, 2 * margin + 1], np.uint8))
    return region[..., None].astype(np.float32)


def colour_transfer(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """source's colours moved to target's statistics (Reinhard et al. 2001, in CIE Lab): uint8 RGB."""
    source_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    target_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    source_mean, source_std = source_lab.mean(axis=(0, 1)), source_lab.std(axis=(0, 1)) + 1e-3
    target_mean, target_std = target_lab.mean(axis=(0, 1)), target_lab.std(axis=(0, 1))
    moved = (source_lab - source_mean) * (target_std / source_std) + target_mean
    return cv2.cvtColor(np.clip(moved, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def to_model_range(images):
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def person_pairs(photos: PhotoSet, max_pose_distance: float = float("inf")) -> dict:
    """identity -> [(a, b)] the unordered pairs of that person's photos whose pose_distance is at most
    max_pose_distance, for people with at least one such pair."""
    pairs = {}
    for identity, indices in photos.people_with_pairs().items():
        kept = [
            (a, b)
            for i, a in enumerate(indices)
            for b in indices[i + 1 :]
            if max_pose_distance == float("inf")
            or pose_distance(photos.landmarks[a], photos.landmarks[b]) <= max_pose_distance
        ]
        if kept:
            pairs[identity] = kept
    return pairs


def pair_dataset(
    photos: PhotoSet,
    batch_size: int,
    seed: int = 0,
    augment: bool = True,
    region: str = "image",
    max_pose_distance: float = float("inf"),
    with_landmarks: bool = False,
    self_pairs: float = 0.0,
) -> tf.data.Dataset:
    """Endless batches {"source", "target"} [B, S, S, 3] in [-1, 1]: a random person (among those
    with a pair of photos within max_pose_distance, see person_pairs), one of their pairs in random
    order, S colour-transferred to T, both flipped together with probability 1/2 (augment=False: no
    flip). region="face" adds "target_weight" [B, S, S, 1], T's face_region, where the reconstruction
    error counts. with_landmarks adds "source_landmarks" and "target_landmarks" [B, 68, 2] (x, y)
    pixels, flipped with their photos (for losses.landmark_loss). self_pairs: the fraction of
    examples whose S is T itself (not colour-transferred; its weight 1 everywhere, since nothing
    differs but the flow): they teach g(T, Z(T)) = T, where Algorithm 1's edits start. Deterministic
    for a seed."""
    if region not in ("image", "face"):
        raise ValueError(f"region must be image or face, got {region!r}")
    people = person_pairs(photos, max_pose_distance)
    if not people:
        raise ValueError(
            f"no person has two photos within a pose distance of {max_pose_distance:g} px: "
            "the flow VAE needs pairs of one person's photos"
        )
    names = sorted(people)
    size = photos.images.shape[1]

    def pairs():
        rng = np.random.default_rng(seed)
        while True:
            person_pairs_ = people[names[rng.integers(len(names))]]
            s, t = person_pairs_[rng.integers(len(person_pairs_))]
            if rng.random() < 0.5:
                s, t = t, s
            itself = self_pairs > 0 and rng.random() < self_pairs  # (no draw without: old seeds keep their pairs)
            if itself:
                s = t
            source = photos.images[t] if itself else colour_transfer(photos.images[s], photos.images[t])
            images = [source, photos.images[t]]
            if with_weight:
                images.append(
                    np.ones([size, size, 1], np.float32) if itself else face_region(photos.landmarks[t], size)
                )
            points = [photos.landmarks[s], photos.landmarks[t]] if with_landmarks else []
            if augment and rng.random() < 0.5:
                images = [array[:, ::-1] for array in images]
                # x mirrored; the numbering is left as is (landmarks.MIRROR would relabel left and
                # right): the loss compares S's point k with T's point k, the same for both.
                points = [np.stack([size - 1 - p[:, 0], p[:, 1]], axis=-1) for p in points]
            yield tuple(np.ascontiguousarray(array) for array in images + points)

    with_weight = region == "face"
    image_spec = tf.TensorSpec([size, size, 3], tf.uint8)
    weight_spec = [tf.TensorSpec([size, size, 1], tf.float32)] if with_weight else []
    points_spec = [tf.TensorSpec([photos.landmarks.shape[1], 2], tf.float32)] * (2 if with_landmarks else 0)
    signature = (image_spec, image_spec, *weight_spec, *points_spec)
    dataset = tf.data.Dataset.from_generator(pairs, output_signature=signature)

    def to_batch(source, target, *extra):
        batch = {"source": to_model_range(source), "target": to_model_range(target)}
        extra = list(extra)
        if with_weight:
            batch["target_weight"] = extra.pop(0)
        if with_landmarks:
            batch["source_landmarks"], batch["target_landmarks"] = extra
        return batch

    dataset = dataset.map(to_batch)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def photo_latents(model, photos: PhotoSet, batch_size: int = 32) -> np.ndarray:
    """The encoder's mean latent of every photo: [N, 4, 4, D]."""
    return np.concatenate(
        [
            model.encode(to_model_range(photos.images[start : start + batch_size]))[0].numpy()
            for start in range(0, len(photos.images), batch_size)
        ]
    )
