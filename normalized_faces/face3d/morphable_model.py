"""The vendored Surrey Face Model (sfm/, from eos; PROVENANCE.md there): a linear shape model.

    model = SurreyFaceModel.load()
    vertices = model.shape(coefficients, expression)   # [V, 3] millimetres

Model frame: x to the subject's left (image right in a frontal view), y up, z out of the face
towards the viewer (the nose tip is the largest z). V = 3,448 vertices, T = 6,736 triangles,
K = 63 shape components, 6 expression blendshapes.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

SFM_FILE = pathlib.Path(__file__).resolve().parent / "sfm" / "sfm_3448.npz"


@dataclasses.dataclass(frozen=True)
class SurreyFaceModel:
    mean: np.ndarray  # [V, 3] float32
    basis: np.ndarray  # [K, V, 3]: components scaled by sqrt(eigenvalue), so coefficients are in std devs
    blendshapes: np.ndarray  # [E, V, 3]
    blendshape_names: tuple
    triangles: np.ndarray  # [T, 3] int32, counter-clockwise seen from the front (+z)
    uv: np.ndarray  # [V, 2] in [0, 1], u right, v down
    landmark_vertices: np.ndarray  # [68] vertex of each dlib landmark, -1 where none (contour, inner mouth corners)
    contour_landmarks: tuple  # (right [8], left [8]) dlib indices of the jaw's contour points
    model_contours: tuple  # (right, left) vertex indices the contour points may land on
    symmetric_vertex: np.ndarray  # [V] each vertex's mirror image

    @classmethod
    def load(cls, path=SFM_FILE) -> "SurreyFaceModel":
        with np.load(path) as arrays:
            return cls(
                mean=arrays["mean"],
                basis=arrays["basis"],
                blendshapes=arrays["blendshapes"],
                blendshape_names=tuple(str(name) for name in arrays["blendshape_names"]),
                triangles=arrays["triangles"],
                uv=arrays["uv"],
                landmark_vertices=arrays["landmark_vertices"],
                contour_landmarks=(arrays["contour_landmarks_right"], arrays["contour_landmarks_left"]),
                model_contours=(arrays["model_contour_right"], arrays["model_contour_left"]),
                symmetric_vertex=arrays["symmetric_vertex"],
            )

    @property
    def num_vertices(self) -> int:
        return len(self.mean)

    @property
    def num_components(self) -> int:
        return len(self.basis)

    @property
    def num_expressions(self) -> int:
        return len(self.blendshapes)

    def shape(self, coefficients=None, expression=None) -> np.ndarray:
        """mean + basis . coefficients + blendshapes . expression: [V, 3] float64. Missing or short
        coefficient vectors count as zeros after their end."""
        vertices = self.mean.astype(np.float64)
        if coefficients is not None:
            coefficients = np.asarray(coefficients, np.float64)
            vertices = vertices + np.tensordot(coefficients, self.basis[: len(coefficients)], axes=1)
        if expression is not None:
            vertices = vertices + np.tensordot(np.asarray(expression, np.float64), self.blendshapes, axes=1)
        return vertices

    def vertex_normals(self, vertices: np.ndarray) -> np.ndarray:
        """Unit normals [V, 3] of a mesh with this model's triangles: the area-weighted mean of the
        adjacent triangles' normals (pointing out of the face, +z at the nose tip)."""
        a, b, c = (vertices[self.triangles[:, i]] for i in range(3))
        face_normals = np.cross(b - a, c - a)  # length = twice the area: the weighting
        normals = np.zeros_like(vertices, dtype=np.float64)
        for i in range(3):
            np.add.at(normals, self.triangles[:, i], face_normals)
        return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)

    @functools.cached_property
    def edges(self) -> tuple:
        """(rows, cols, degree): every directed mesh edge rows[i] -> cols[i] once, and each vertex's
        neighbour count [V, 1]; computed once per model (smoothing and filling reuse it)."""
        pairs = np.concatenate([self.triangles[:, [0, 1]], self.triangles[:, [1, 2]], self.triangles[:, [2, 0]]])
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
        cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
        degree = np.bincount(rows, minlength=self.num_vertices)[:, None].astype(np.float64)
        return rows, cols, degree

    def neighbour_mean(self, values: np.ndarray) -> np.ndarray:
        """Each vertex's mean of its neighbours' values [V, C]."""
        rows, cols, degree = self.edges
        summed = np.zeros_like(values, dtype=np.float64)
        np.add.at(summed, rows, values[cols])
        return summed / degree
