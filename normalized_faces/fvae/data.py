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


@dataclasses.dataclass
class PhotoSet:
    """Every photo of one split: images [N, S, S, 3] uint8, identities [N], labels [N] (expressions.LABELS)."""

    images: np.ndarray
    identities: np.ndarray
    labels: np.ndarray

    def people_with_pairs(self) -> dict:
        """identity -> indices of its photos, for people with two or more."""
        by_person = collections.defaultdict(list)
        for index, identity in enumerate(self.identities):
            by_person[identity].append(index)
        return {identity: np.array(indices) for identity, indices in by_person.items() if len(indices) >= 2}


def load_photos(data_dir, split: str, size: int = IMAGE_SIZE) -> PhotoSet:
    """Reads a split's photo records (kind "photo"), resizing each aligned crop to size x size and
    labelling its expression (landmarks scaled with it)."""
    images, identities, labels = [], [], []
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
    if not images:
        raise ValueError(f"{data_dir}: no {split} records")
    return PhotoSet(np.stack(images), np.array(identities), np.array(labels))


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


def pair_dataset(photos: PhotoSet, batch_size: int, seed: int = 0, augment: bool = True) -> tf.data.Dataset:
    """Endless batches {"source", "target"} [B, S, S, 3] in [-1, 1]: a random person (among those
    with two photos or more), two of their photos, S colour-transferred to T, both flipped together
    with probability 1/2 (augment=False: no flip). Deterministic for a seed."""
    people = photos.people_with_pairs()
    if not people:
        raise ValueError("no person has two photos: the flow VAE needs pairs of one person's photos")
    names = sorted(people)
    size = photos.images.shape[1]

    def pairs():
        rng = np.random.default_rng(seed)
        while True:
            indices = people[names[rng.integers(len(names))]]
            s, t = rng.choice(indices, size=2, replace=False)
            source, target = colour_transfer(photos.images[s], photos.images[t]), photos.images[t]
            if augment and rng.random() < 0.5:
                source, target = source[:, ::-1], target[:, ::-1]
            yield np.ascontiguousarray(source), np.ascontiguousarray(target)

    spec = tf.TensorSpec([size, size, 3], tf.uint8)
    dataset = tf.data.Dataset.from_generator(pairs, output_signature=(spec, spec))
    dataset = dataset.map(lambda s, t: {"source": to_model_range(s), "target": to_model_range(t)})
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def mean_latents(model, photos: PhotoSet, batch_size: int = 32) -> dict:
    """label -> the mean latent [4, 4, D] of that label's photos (Algorithm 1's Z_source / Z_target),
    for every label with photos except "other"."""
    sums, counts = {}, collections.Counter()
    for start in range(0, len(photos.images), batch_size):
        images = to_model_range(photos.images[start : start + batch_size])
        means = model.encode(images)[0].numpy()
        for mean, label in zip(means, photos.labels[start : start + batch_size]):
            if label == "other":
                continue
            sums[label] = sums.get(label, 0.0) + mean
            counts[label] += 1
    return {label: sums[label] / counts[label] for label in sums}
