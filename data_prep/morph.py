"""Stage 7: random morphs (the paper's augmentation).

For a seed face A, pick B among A's k nearest neighbours (k = 200) under a distance mixing
landmark and texture differences; interpolate landmarks and textures independently with weights
~ U[0, 1]; paste the morphed texture's face onto A's texture by gradient-domain (Poisson)
compositing inside the convex hull of the mean landmarks, softened by a Gaussian blur; warp the
result from the mean landmarks to the morphed landmarks.

Nearest neighbours use scipy's cKDTree over compact descriptors (landmarks + a 12 x 12 texture
thumbnail, each part scaled to unit RMS spread and weighted by `neighbour_texture_mix`): a real
k-d tree, so planning scales to 100K+ faces.
"""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np
import scipy.fft
from scipy.spatial import cKDTree

from data_prep import average

THUMBNAIL_SIZE = 12


@dataclasses.dataclass(frozen=True)
class MorphPlan:
    morph_id: int
    seed: str  # face key (identity) of A
    target: str  # of B
    landmark_blend: float  # L = (1 - w) L_A + w L_B
    texture_blend: float  # T = (1 - w) T_A + w T_B


def face_descriptor(texture: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks [136], texture thumbnail [12*12*3]) parts of the neighbour-search descriptor."""
    thumbnail = cv2.resize(
        np.asarray(texture, np.float32) / 255.0, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA
    )
    return np.asarray(landmarks, np.float64).reshape(-1), thumbnail.reshape(-1).astype(np.float64)


def descriptor_matrix(landmark_parts, texture_parts, neighbour_texture_mix: float) -> np.ndarray:
    """Stacks descriptor parts; each part is centred and scaled to unit RMS spread, then weighted
    by sqrt(1 - w) (landmarks) and sqrt(w) (texture), so squared distances mix as (1-w) : w."""
    if not 0.0 <= neighbour_texture_mix <= 1.0:
        raise ValueError(f"neighbour_texture_mix must be in [0, 1], got {neighbour_texture_mix}")
    parts = []
    for values, weight in (
        (np.asarray(landmark_parts), 1.0 - neighbour_texture_mix),
        (np.asarray(texture_parts), neighbour_texture_mix),
    ):
        centred = values - values.mean(axis=0)
        spread = np.sqrt((centred**2).sum(axis=1).mean()) or 1.0
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
    their blend in between; outside the mask the destination is kept exactly (Dirichlet boundary).

    The solver is conjugate gradients preconditioned by the whole image's Laplacian inverse (a
    discrete sine transform), which the masked Laplacian is close to: ~20 iterations to 1e-3 of a
    grey level, all three channels at once, with nothing but arrays kept between calls. (A SciPy
    SuperLU factorization kept alive inside Beam made the process exit with code 120.)
    """

    def __init__(
        self,
        mean_landmarks: np.ndarray,
        size: int,
        blur_sigma: float = 4.0,
        tolerance: float = 1e-3,
        max_iterations: int = 200,
    ):
        hull = cv2.convexHull(np.round(np.asarray(mean_landmarks) * 16).astype(np.int32))
        hard = np.zeros([size, size], np.uint8)
        cv2.fillConvexPoly(hard, hull, 255, lineType=cv2.LINE_AA, shift=4)
        self.soft = cv2.GaussianBlur(hard.astype(np.float64) / 255.0, (0, 0), blur_sigma)
        # Unknowns: where the soft mask is non-negligible, away from the image border. All the
        # work happens in the region's bounding box (one pixel of margin), about a third of the image.
        region = self.soft > 1e-3
        region[0, :] = region[-1, :] = region[:, 0] = region[:, -1] = False
        self.region = region
        self.size = size
        ys, xs = np.nonzero(region)
        self._box = (slice(ys.min() - 1, ys.max() + 2), slice(xs.min() - 1, xs.max() + 2))
        self._region = region[self._box][..., None]
        self._soft = self.soft[self._box]
        self.tolerance = tolerance
        self.max_iterations = max_iterations
        # The preconditioner inverts the Laplacian on a rectangle a little larger than the box's
        # interior, sized so the sine transforms are fast (length + 1 a product of 2, 3, 5).
        self._inner = tuple(n - 2 for n in self._region.shape[:2])
        self._transform = tuple(scipy.fft.next_fast_len(n + 1) - 1 for n in self._inner)
        axes = [2.0 - 2.0 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)) for n in self._transform]
        self._eigenvalues = (axes[0][:, None] + axes[1][None, :])[..., None]  # of -Laplacian
        self.iterations = 0

    def _neg_laplacian(self, values):
        """-Laplacian of [h, w, C] values that are zero outside the region, on the region."""
        out = 4.0 * values
        out[1:] -= values[:-1]
        out[:-1] -= values[1:]
        out[:, 1:] -= values[:, :-1]
        out[:, :-1] -= values[:, 1:]
        return out * self._region

    def _precondition(self, residual):
        (h, w), (th, tw) = self._inner, self._transform
        padded = np.zeros([th, tw, residual.shape[2]], residual.dtype)
        padded[:h, :w] = residual[1:-1, 1:-1]
        transformed = scipy.fft.dstn(padded, type=1, axes=(0, 1)) / self._eigenvalues
        out = np.zeros_like(residual)
        out[1:-1, 1:-1] = scipy.fft.idstn(transformed, type=1, axes=(0, 1))[:h, :w]
        return out * self._region

    def __call__(self, source: np.ndarray, destination: np.ndarray) -> np.ndarray:
        """source, destination: [S, S, 3] uint8 (same frame). Returns the composite, uint8."""
        src = np.asarray(source, np.float64)[self._box]
        dst = np.asarray(destination, np.float64)[self._box]
        region, soft = self._region, self._soft
        # Right-hand side: the guidance field's divergence, plus the known destination values of
        # the region's outside neighbours (Dirichlet). The box's edge is outside the region, so
        # np.roll's wrap-around never reaches a region pixel.
        rhs = np.zeros_like(src)
        for axis, step in ((0, 1), (0, -1), (1, 1), (1, -1)):
            s_q, d_q = np.roll(src, -step, axis), np.roll(dst, -step, axis)
            mix = ((soft + np.roll(soft, -step, axis)) / 2.0)[..., None]
            rhs += mix * (src - s_q) + (1.0 - mix) * (dst - d_q)
            rhs += d_q * ~np.roll(region, -step, axis)
        rhs *= region
        # Preconditioned conjugate gradients, per channel, starting from the destination.
        x = dst * region
        r = rhs - self._neg_laplacian(x)
        z = self._precondition(r)
        p = z.copy()
        rz = (r * z).sum(axis=(0, 1))
        for iteration in range(1, self.max_iterations + 1):
            self.iterations = iteration  # reported by benchmarks/data_prep_bench.py
            ap = self._neg_laplacian(p)
            alpha = rz / np.maximum((p * ap).sum(axis=(0, 1)), 1e-30)
            x += alpha * p
            r -= alpha * ap
            if np.abs(r).max() < self.tolerance:
                break
            z = self._precondition(r)
            rz_new = (r * z).sum(axis=(0, 1))
            p = z + (rz_new / np.maximum(rz, 1e-30)) * p
            rz = rz_new
        result = np.asarray(destination, np.float64).copy()
        result[self._box] = np.where(region, x, dst)
        return np.clip(result + 0.5, 0, 255).astype(np.uint8)


_COMPOSITORS = {}


def compositor_for(mean_landmarks, size, blur_sigma) -> PoissonCompositor:
    """One compositor per process and mask (its setup is reused by every morph)."""
    key = (np.asarray(mean_landmarks, np.float64).tobytes(), int(size), float(blur_sigma))
    if key not in _COMPOSITORS:
        _COMPOSITORS.clear()
        _COMPOSITORS[key] = PoissonCompositor(mean_landmarks, size, blur_sigma)
    return _COMPOSITORS[key]


def make_morph(plan: MorphPlan, seed_face, target_face, mean_landmarks, compositor: PoissonCompositor):
    """Builds one morph. Faces are (texture uint8 [S, S, 3], landmarks [68, 2]).

    Returns:
      (image uint8, texture uint8, landmarks [68, 2]): the composite texture in the mean frame,
      and the image it renders to at the morphed landmarks.
    """
    seed_texture, seed_landmarks = seed_face
    target_texture, target_landmarks = target_face
    w_l, w_t = plan.landmark_blend, plan.texture_blend
    landmarks = (1.0 - w_l) * np.asarray(seed_landmarks) + w_l * np.asarray(target_landmarks)
    blended = average.to_uint8(
        ((1.0 - w_t) * seed_texture.astype(np.float64) + w_t * target_texture.astype(np.float64)) / 255.0
    )
    texture = compositor(blended, seed_texture)  # the face pasted onto A's background
    image = average.to_uint8(average.warp_faces(texture[None], np.asarray(mean_landmarks)[None], landmarks[None])[0])
    return image, texture, landmarks
