"""Vendors the Surrey Face Model into the package: eos's files -> normalized_faces/face3d/sfm/.

    python -m normalized_faces.face3d.vendor_sfm --source=../shared/3dmm

Set-up for maintainers, not run time (Python 3.11+: tomllib, and eos-py's wheels): it reads eos's cereal archives with eos-py (`pip install
eos-py==1.5.0`) and writes everything the 3-D face needs as plain arrays (sfm_3448.npz), so users
need neither eos nor its binary format. Beside it: eos's licence (Apache-2.0) and PROVENANCE.md with
the sha256 of every source file.

What the npz holds (V = 3,448 vertices, T = 6,736 triangles, K = 63 shape components):
  mean [V, 3], basis [K, V, 3] (the orthonormal PCA basis times sqrt(eigenvalue): a coefficient is
  in standard deviations), eigenvalues [K], blendshapes [6, V, 3] and blendshape_names [6],
  triangles [T, 3], uv [V, 2] (u right, v down, in [0, 1]),
  landmark_vertices [68] (dlib index -> vertex, -1 where ibug_to_sfm.txt has none: the 16 contour
  points and the inner mouth corners), contour_landmarks_right/left [8] (dlib indices),
  model_contour_right/left (vertex indices, from sfm_model_contours.json),
  symmetric_vertex [V] (each vertex's mirror image; see below).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import numpy as np
import tomllib
from absl import app, flags

SFM_DIR = pathlib.Path(__file__).resolve().parent / "sfm"
SOURCES = (
    "sfm_shape_3448.bin",
    "expression_blendshapes_3448.bin",
    "ibug_to_sfm.txt",
    "sfm_model_contours.json",
    "sfm_reference_symmetry.txt",
)

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "eos's share/ files (../shared/3dmm).")
flags.DEFINE_string("output_dir", str(SFM_DIR), "Where sfm_3448.npz, LICENSE-eos.txt and PROVENANCE.md go.")


def landmark_vertices(mapping_text: str) -> tuple[np.ndarray, list, list]:
    """ibug_to_sfm.txt (TOML, 1-based dlib indices) -> ([68] vertex per dlib index or -1, right and
    left contour landmarks as 0-based dlib indices)."""
    table = tomllib.loads(mapping_text)
    vertices = np.full(68, -1, np.int32)
    for ibug, vertex in table["landmark_mappings"].items():
        vertices[int(ibug) - 1] = int(vertex)
    contours = table["contour_landmarks"]
    return vertices, [i - 1 for i in contours["right"]], [i - 1 for i in contours["left"]]


def symmetric_vertices(uv: np.ndarray, reference_pairs: np.ndarray) -> np.ndarray:
    """Each vertex's mirror image. sfm_reference_symmetry.txt covers only the reference's first 845
    vertices; the model's texture coordinates are mirror-symmetric ((u, v) <-> (1 - u, v) to 1e-7
    for every vertex), so the counterpart of each of the 3,448 is the vertex at its mirrored uv.
    Checked: equal to the file's pairs on all 845, and an involution."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(uv).query(np.stack([1.0 - uv[:, 0], uv[:, 1]], axis=-1))
    if distance.max() > 1e-5:
        raise ValueError(f"texture coordinates are not mirror-symmetric (off by {distance.max():.2g})")
    if not np.array_equal(index[: len(reference_pairs)], reference_pairs):
        raise ValueError("mirrored texture coordinates disagree with sfm_reference_symmetry.txt")
    if not np.array_equal(index[index], np.arange(len(index))):
        raise ValueError("the mirror pairing is not an involution")
    return index.astype(np.int32)


def convert(source: pathlib.Path) -> dict:
    """The arrays of sfm_3448.npz from eos's files."""
    import eos

    model = eos.morphablemodel.load_model(str(source / "sfm_shape_3448.bin"))
    shape = model.get_shape_model()
    count = len(np.asarray(shape.get_mean())) // 3
    eigenvalues = np.asarray(shape.get_eigenvalues(), np.float32)
    rescaled = np.asarray(shape.get_rescaled_pca_basis(), np.float32)  # [3V, K], column k * sqrt(eigenvalue k)
    blendshapes = eos.morphablemodel.load_blendshapes(str(source / "expression_blendshapes_3448.bin"))
    uv = np.asarray(model.get_texture_coordinates(), np.float64)
    vertices, right, left = landmark_vertices((source / "ibug_to_sfm.txt").read_text())
    contours = json.loads((source / "sfm_model_contours.json").read_text())["model_contour"]
    reference_pairs = np.loadtxt(source / "sfm_reference_symmetry.txt", comments="#", dtype=np.int64) - 1
    return {
        "mean": np.asarray(shape.get_mean(), np.float32).reshape(count, 3),
        "basis": rescaled.T.reshape(-1, count, 3),
        "eigenvalues": eigenvalues,
        "blendshapes": np.stack([np.asarray(b.deformation, np.float32).reshape(count, 3) for b in blendshapes]),
        "blendshape_names": np.array([b.name for b in blendshapes]),
        "triangles": np.asarray(shape.get_triangle_list(), np.int32),
        "uv": uv.astype(np.float32),
        "landmark_vertices": vertices,
        "contour_landmarks_right": np.array(right, np.int32),
        "contour_landmarks_left": np.array(left, np.int32),
        "model_contour_right": np.array(contours["right_contour"], np.int32),
        "model_contour_left": np.array(contours["left_contour"], np.int32),
        "symmetric_vertex": symmetric_vertices(uv, reference_pairs),
    }


def main(argv):
    del argv
    if not FLAGS.source:
        raise app.UsageError("--source is required (eos's share/ files, e.g. ../shared/3dmm)")
    source, output_dir = pathlib.Path(FLAGS.source), pathlib.Path(FLAGS.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    arrays = convert(source)
    np.savez_compressed(output_dir / "sfm_3448.npz", **arrays)
    shutil.copyfile(source / "LICENSE-eos.txt", output_dir / "LICENSE-eos.txt")
    digests = "\n".join(
        f"| `{name}` | `{hashlib.sha256((source / name).read_bytes()).hexdigest()}` |" for name in SOURCES
    )
    (output_dir / "PROVENANCE.md").write_text(
        f"""# The Surrey Face Model (shape-only, 3,448 vertices), vendored from eos

P. Huber, G. Hu, R. Tena, P. Mortazavian, W. Koppen, W. Christmas, M. Raetsch, J. Kittler,
"A Multiresolution 3D Morphable Face Model and Fitting Framework", VISAPP 2016.
Files from eos (https://github.com/patrikhuber/eos, `share/`), Copyright Patrik Huber,
Apache License 2.0: `LICENSE-eos.txt` beside this file. The 6 expression blendshapes (anger,
disgust, fear, happiness, sadness, surprise) come with eos too.

`sfm_3448.npz` is a conversion, not a modification: the same numbers, read with eos-py 1.5.0 and
written as plain arrays by `python -m normalized_faces.face3d.vendor_sfm --source=DIR`
(normalized_faces/face3d/vendor_sfm.py says what each array is). One array is derived: each
vertex's mirror counterpart, from the model's mirror-symmetric texture coordinates (it equals
`sfm_reference_symmetry.txt` on the 845 vertices that file covers).

| source file | sha256 |
|---|---|
{digests}
"""
    )
    size = (output_dir / "sfm_3448.npz").stat().st_size
    print(
        f"wrote {output_dir}/sfm_3448.npz ({size / 1e6:.1f} MB: {len(arrays['mean'])} vertices, "
        f"{len(arrays['triangles'])} triangles, {len(arrays['eigenvalues'])} shape components, "
        f"{len(arrays['blendshapes'])} blendshapes)"
    )


if __name__ == "__main__":
    app.run(main)
