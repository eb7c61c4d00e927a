"""A textured 3-D face from a normalized face (the paper's Sec. 7.3 and Appendix B, adapted to the
Surrey Face Model vendored in sfm/).

    meshes = FaceMeshBuilder()(normalized_faces, landmarks)   # [B, S, S, 3] uint8, [B, 68, 2] px
    meshes[0].write(path_stem)                                 # .obj + .mtl + _texture.png, .ply

morphable_model.py reads the model, fit.py fits it to the landmarks (TF, gradient descent),
texture.py colours it from the face, render.py draws it (z-buffer, turntable), mesh_io.py writes it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from normalized_faces.face3d import fit as fitting
from normalized_faces.face3d import mesh_io, render, texture
from normalized_faces.face3d.morphable_model import SurreyFaceModel

DegenerateLandmarks = fitting.DegenerateLandmarks


@dataclasses.dataclass
class FaceMesh:
    """One face's mesh: vertices in the model's frame (mm, y up), per-vertex colours, a uv texture."""

    model: SurreyFaceModel
    fit: fitting.FaceFit
    vertices: np.ndarray  # [V, 3]
    colors: np.ndarray  # [V, 3] in [0, 255]
    confidence: np.ndarray  # [V]
    texture: np.ndarray  # [S, S, 3] uint8

    def write(self, stem) -> list:
        """STEM.obj (+ .mtl, _texture.png) and STEM.ply; returns the paths."""
        paths = mesh_io.write_obj(stem, self.vertices, self.model.triangles, self.model.uv, self.texture)
        return paths + [mesh_io.write_ply(stem, self.vertices, self.model.triangles, self.colors)]

    def turntable(self, size: int = 224, yaws=(-45.0, -22.5, 0.0, 22.5, 45.0)) -> list:
        return render.turntable(self.model, self.vertices, self.colors, yaws, size)


class FaceMeshBuilder:
    """Fits and colours meshes; `neutral` zeroes the fitted expression blendshapes in the mesh
    written (a neutral mesh even when the normalized face is not quite neutral)."""

    def __init__(self, model: SurreyFaceModel | None = None, neutral: bool = False, texture_size: int = 512):
        self.model = model or SurreyFaceModel.load()
        self.fitter = fitting.LandmarkFitter(self.model)
        self.neutral = neutral
        self.texture_size = texture_size

    def __call__(self, faces, landmarks) -> list[FaceMesh]:
        faces = np.asarray(faces)
        fits = self.fitter.fit(np.asarray(landmarks, np.float64).reshape(len(faces), 68, 2), faces.shape[1])
        meshes = []
        for face, points, face_fit in zip(faces, np.asarray(landmarks).reshape(len(faces), 68, 2), fits):
            colors, confidence = texture.vertex_colors(self.model, face_fit, face, points)
            uv_map = texture.uv_texture(self.model, face_fit, face, colors, confidence, self.texture_size)
            vertices = face_fit.vertices(self.model, neutral=self.neutral)
            meshes.append(FaceMesh(self.model, face_fit, vertices, colors, confidence, uv_map))
        return meshes
