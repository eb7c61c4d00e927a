"""Stage 7: random morphs (the paper's augmentation).

For a seed face A, pick B among A's k nearest neighbours (k = 200) under a distance mixing
landmark and texture differences; interpolate landmarks and textures independently with weights
~ U[0, 1]; paste the morphed texture's face onto A's texture by gradient-domain (Poisson)
compositing inside the convex hull of the mean landmarks, softened by a Gaussian blur; warp the
result from the mean landmarks to the morphed landmarks.

Nearest neighbours use scipy's cKDTree over compact descriptors (landmarks + a 12 x 12 texture
thumbnail, each part scaled to unit RMS spread and weighted by `texture_weight`): a real
k-d tree, so planning scales to 100K+ faces.
"""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.spatial import cKDTree

from data_prep import average

THUMBNAIL_SIZE = 12


@dataclasses.dataclass(frozen=True)
class MorphPlan:
    morph_id: int
    seed: str  # face key (identity) of A
    target: str  # of B
    landmark_weight: float  # L = (1 - w) L_A + w L_B
    texture_weight: float  # T = (1 - w) T_A + w T_B


def face_descriptor(texture: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks [136], texture thumbnail [12*12*3]) parts of the neighbour-search descriptor."""
    thumbnail = cv2.resize(np.asarray(texture, np.float32) / 255.0, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)
    return np.asarray(landmarks, np.float64).reshape(-1), thumbnail.reshape(-1).astype(np.float64)


def descriptor_matrix(landmark_parts, texture_parts, texture_weight: float) -> np.ndarray:
    """Stacks descriptor parts; each part is centred and scaled to unit RMS spread, then weighted
    by sqrt(1 - w) (landmarks) and sqrt(w) (texture), so squared distances mix as (1-w) : w."""
    if not 0.0 <= texture_weight <= 1.0:
        raise ValueError(f"texture_weight must be in [0, 1], got {texture_weight}")
    parts = []
    for values, weight in ((np.asarray(landmark_parts), 1.0 - texture_weight), (np.asarray(texture_parts), texture_weight)):
        centred = values - values.mean(axis=0)
        spread = np.sqrt((centred ** 2).sum(axis=1).mean()) or 1.0
        parts.append(centred / spread * np.sqrt(weight))
    return np.concatenate(parts, axis=1)


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def plan_morphs(keys, descriptors, num_morphs: int, k: int = 200, seed: int = 0, first_id: int = 0) -> list:
    """Chooses seed, neighbour and weights for each morph: reproducible for the same inputs and seed.

    Args:
      keys: face keys, in any order (sorted here so the plan does not depend on input order).
      descriptors: [N, D] rows matching keys.
      k: neighbours to choose from (the paper: 200); fewer faces than k + 1 use all others.

    Returns:
      [MorphPlan], num_morphs of them (none if fewer than 2 faces).
    """
    order = np.argsort(np.asarray(keys, dtype=object).astype(str))
    keys = [keys[i] for i in order]
    descriptors = np.asarray(descriptors)[order]
    if len(keys) < 2 or num_morphs <= 0:
        return []
    k = min(k, len(keys) - 1)
    tree = cKDTree(descriptors)
    _, neighbours = tree.query(descriptors, k=k + 1)  # the first is the face itself
    neighbours = np.asarray(neighbours).reshape(len(keys), -1)[:, 1:]
    rng = np.random.default_rng(_stable_seed("morph-plan", seed, len(keys), num_morphs))
    seeds = rng.integers(0, len(keys), size=num_morphs)
    choices = rng.integers(0, k, size=num_morphs)
    weights = rng.uniform(0.0, 1.0, size=[num_morphs, 2])
    return [
        MorphPlan(first_id + i, keys[s], keys[neighbours[s, c]], float(w[0]), float(w[1]))
        for i, (s, c, w) in enumerate(zip(seeds, choices, weights))
    ]


class PoissonCompositor:
    """Gradient-domain compositing of a source onto a destination inside a fixed soft mask.

    Solves, over the pixels of the (dilated) mask, the discrete Poisson equation whose guidance
    field is the source's gradients where the soft mask is 1, the destination's where it is 0, and
    their blend in between; outside the mask the destination is kept exactly. The mask is the same
    for every morph (the mean landmarks' hull), so the sparse system is factorized once.
    """

    def __init__(self, mean_landmarks: np.ndarray, size: int, blur_sigma: float = 4.0):
        hull = cv2.convexHull(np.round(np.asarray(mean_landmarks) * 16).astype(np.int32))
        hard = np.zeros([size, size], np.uint8)
        cv2.fillConvexPoly(hard, hull, 255, lineType=cv2.LINE_AA, shift=4)
        self.soft = cv2.GaussianBlur(hard.astype(np.float64) / 255.0, (0, 0), blur_sigma)
        # Unknowns: where the soft mask is non-negligible, away from the image border.
        region = self.soft > 1e-3
        region[0, :] = region[-1, :] = region[:, 0] = region[:, -1] = False
        self.region = region
        self.size = size
        ys, xs = np.nonzero(region)
        index = -np.ones([size, size], np.int64)
        index[ys, xs] = np.arange(len(ys))
        self._ys, self._xs, self._index = ys, xs, index
        rows, cols, values = [np.arange(len(ys))], [np.arange(len(ys))], [np.full(len(ys), 4.0)]
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            neighbour = index[ys + dy, xs + dx]
            inside = neighbour >= 0
            rows.append(np.arange(len(ys))[inside])
            cols.append(neighbour[inside])
            values.append(-np.ones(inside.sum()))
        matrix = scipy.sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(len(ys), len(ys)))
        self._solve = scipy.sparse.linalg.factorized(matrix)

    def __call__(self, source: np.ndarray, destination: np.ndarray) -> np.ndarray:
        """source, destination: [S, S, 3] uint8 (same frame). Returns the composite, uint8."""
        src = np.asarray(source, np.float64)
        dst = np.asarray(destination, np.float64)
        ys, xs = self._ys, self._xs
        result = dst.copy()
        for channel in range(src.shape[2]):
            s, d = src[..., channel], dst[..., channel]
            rhs = np.zeros(len(ys))
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                qy, qx = ys + dy, xs + dx
                mix = (self.soft[ys, xs] + self.soft[qy, qx]) / 2.0  # mask on the edge p-q
                rhs += mix * (s[ys, xs] - s[qy, qx]) + (1.0 - mix) * (d[ys, xs] - d[qy, qx])
                outside = self._index[qy, qx] < 0
                rhs[outside] += d[qy[outside], qx[outside]]  # Dirichlet: the destination's value
            result[ys, xs, channel] = self._solve(rhs)
        return np.clip(result + 0.5, 0, 255).astype(np.uint8)


def make_morph(plan: MorphPlan, seed_face, target_face, mean_landmarks, compositor: PoissonCompositor):
    """Builds one morph. Faces are (texture uint8 [S, S, 3], landmarks [68, 2]).

    Returns:
      (image uint8, texture uint8, landmarks [68, 2]): the composite texture in the mean frame,
      and the image it renders to at the morphed landmarks.
    """
    seed_texture, seed_landmarks = seed_face
    target_texture, target_landmarks = target_face
    w_l, w_t = plan.landmark_weight, plan.texture_weight
    landmarks = (1.0 - w_l) * np.asarray(seed_landmarks) + w_l * np.asarray(target_landmarks)
    blended = average.to_uint8(((1.0 - w_t) * seed_texture.astype(np.float64) + w_t * target_texture.astype(np.float64)) / 255.0)
    texture = compositor(blended, seed_texture)  # the face pasted onto A's background
    image = average.to_uint8(average.warp_faces(texture[None], np.asarray(mean_landmarks)[None], landmarks[None])[0])
    return image, texture, landmarks
