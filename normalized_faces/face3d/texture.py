"""Colours for the fitted mesh from the normalized face (the paper's Appendix B.3, adapted).

Each vertex takes the colour of the normalized face where it projects, with a confidence: inside
the landmarks' convex hull (a soft falloff of HULL_FALLOFF px across its border) times the
component of its normal towards the camera. The paper projected low-confidence colours onto the
Basel model's colour basis; the Surrey model has none, so instead a low-confidence vertex borrows
its mirror image's colour (the face is frontal and evenly lit), and what neither side sees (ears,
neck, the back of the jaw) is filled by diffusion over the mesh from the confident vertices, then
smoothed.
"""

from __future__ import annotations

import cv2
import numpy as np

from normalized_faces.face3d.fit import FaceFit
from normalized_faces.face3d.morphable_model import SurreyFaceModel
from normalized_faces.face3d.render import rasterize
from normalized_faces.landmarks import convex_hull_mask

HULL_FALLOFF = 6.0  # px at 224: the confidence ramp across the landmark hull's border
CONFIDENT = 0.5  # vertices at least this confident keep their own colour when filling


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """image [H, W, C] sampled at points [N, 2] (x, y; pixel centres at integers), clamped at the border."""
    height, width = image.shape[:2]
    x = np.clip(points[:, 0], 0, width - 1)
    y = np.clip(points[:, 1], 0, height - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), width - 2), np.minimum(np.floor(y).astype(int), height - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    image = image.astype(np.float64)
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def hull_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """[size, size] in [0, 1]: 1 well inside the landmarks' convex hull, 0 outside, a linear ramp
    HULL_FALLOFF px wide (scaled to the image) centred on its border."""
    inside = convex_hull_mask(landmarks, size, size)
    distance_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    distance_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    falloff = HULL_FALLOFF * size / 224.0
    return np.clip(0.5 + (distance_in - distance_out) / falloff, 0.0, 1.0)


def vertex_confidence(model: SurreyFaceModel, fit: FaceFit, landmarks: np.ndarray, projected=None) -> np.ndarray:
    """[V] in [0, 1]: hull mask at the vertex times its normal's component towards the camera."""
    projected = fit.projected(model) if projected is None else projected
    mask = bilinear(hull_mask(landmarks, fit.image_size)[..., None], projected)[:, 0]
    facing = np.clip(model.vertex_normals(fit.vertices(model))[:, 2], 0.0, 1.0)
    return mask * facing


def diffuse(model: SurreyFaceModel, values: np.ndarray, fixed: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Fills the vertices not `fixed` [V] bool with the mean of their neighbours, repeatedly (a
    harmonic fill over the mesh's edges); fixed vertices keep their values."""
    values = np.asarray(values, np.float64).copy()
    free = ~fixed
    if fixed.any():
        values[free] = values[fixed].mean(axis=0)
    for _ in range(iterations):
        values[free] = model.neighbour_mean(values)[free]
    return values


def smooth(model: SurreyFaceModel, values: np.ndarray, iterations: int = 2, amount: float = 0.5) -> np.ndarray:
    """Laplacian smoothing of per-vertex values: each step moves a vertex `amount` of the way to its
    neighbours' mean."""
    values = np.asarray(values, np.float64).copy()
    for _ in range(iterations):
        values = (1 - amount) * values + amount * model.neighbour_mean(values)
    return values


def vertex_colors(model: SurreyFaceModel, fit: FaceFit, image: np.ndarray, landmarks: np.ndarray):
    """Per-vertex RGB [V, 3] in [0, 255] and their confidence [V], filled as the module says."""
    projected = fit.projected(model)
    sampled = bilinear(image, projected)
    confidence = vertex_confidence(model, fit, landmarks, projected)
    mirror = model.symmetric_vertex
    # A vertex and its mirror image, weighted by their confidences.
    weight_self, weight_mirror = confidence[:, None], confidence[mirror][:, None]
    total = weight_self + weight_mirror
    blended = np.where(
        total > 0, (weight_self * sampled + weight_mirror * sampled[mirror]) / np.maximum(total, 1e-12), sampled
    )
    colors = np.where(confidence[:, None] >= CONFIDENT, sampled, blended)
    known = np.maximum(confidence, confidence[mirror]) >= CONFIDENT
    colors = diffuse(model, colors, known)
    colors = np.where(known[:, None], colors, smooth(model, colors, iterations=10))
    return np.clip(smooth(model, colors, iterations=1, amount=0.3), 0, 255), confidence


def uv_texture(
    model: SurreyFaceModel, fit: FaceFit, image: np.ndarray, colors: np.ndarray, confidence: np.ndarray, size: int = 512
) -> np.ndarray:
    """The texture map [size, size, 3] uint8 in the model's uv layout: the normalized face's own
    pixels where the vertices are confident, their filled colours elsewhere (blended by the
    interpolated confidence); white outside the mesh's uv chart."""
    projected = fit.projected(model)
    screen = np.concatenate([model.uv * (size - 1), np.zeros([model.num_vertices, 1])], axis=-1)
    attributes = np.concatenate([projected, confidence[:, None], colors], axis=-1)
    interpolated, covered, _ = rasterize(screen, model.triangles, attributes, size, size)
    pixels = interpolated[covered]
    sampled = bilinear(image, pixels[:, :2])
    trust = np.clip((pixels[:, 2:3] - 0.3) / (CONFIDENT - 0.3), 0.0, 1.0)
    texture = np.full([size, size, 3], 255.0)
    texture[covered] = trust * sampled + (1 - trust) * pixels[:, 3:]
    return np.clip(texture, 0, 255).round().astype(np.uint8)
