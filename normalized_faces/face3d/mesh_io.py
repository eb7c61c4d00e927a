"""Mesh files: Wavefront OBJ (with its .mtl and texture PNG) and PLY with vertex colours.

OBJ faces are 1-based `f v/vt` with one texture coordinate per vertex (the model's uv); OBJ's v
runs upwards, so vt = (u, 1 - v) for the model's top-down v.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def write_obj(path, vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray, texture: np.ndarray) -> list:
    """Writes PATH.obj, PATH.mtl and PATH_texture.png (texture [H, W, 3] uint8). Returns the paths."""
    path = pathlib.Path(path).with_suffix(".obj")
    mtl_path, texture_path = path.with_suffix(".mtl"), path.with_name(path.stem + "_texture.png")
    Image.fromarray(np.asarray(texture, np.uint8)).save(texture_path)
    mtl_path.write_text(
        f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_path.name}\n", encoding="ascii"
    )
    lines = [f"mtllib {mtl_path.name}", "usemtl face"]
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {1.0 - v:.6f}" for u, v in uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in np.asarray(triangles) + 1]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return [path, mtl_path, texture_path]


def read_obj(path):
    """(vertices [V, 3], triangles [T, 3] 0-based, uv [V, 2] with the model's top-down v) of a
    triangle OBJ whose faces give `v/vt` with equal indices (what write_obj writes)."""
    vertices, uv, triangles = [], [], []
    for line in pathlib.Path(path).read_text(encoding="ascii").splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "v":
            vertices.append([float(v) for v in fields[1:4]])
        elif fields[0] == "vt":
            uv.append([float(fields[1]), 1.0 - float(fields[2])])
        elif fields[0] == "f":
            corners = [field.split("/") for field in fields[1:]]
            if len(corners) != 3 or any(len(c) < 2 or c[0] != c[1] for c in corners):
                raise ValueError(f"{path}: expected triangles with v/vt and equal indices, got {line!r}")
            triangles.append([int(c[0]) - 1 for c in corners])
    return np.array(vertices), np.array(triangles, np.int64), np.array(uv)


def write_ply(path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray) -> pathlib.Path:
    """Binary little-endian PLY with per-vertex RGB (colors [V, 3] in [0, 255])."""
    path = pathlib.Path(path).with_suffix(".ply")
    vertices = np.asarray(vertices, np.float32)
    colors = np.clip(np.round(colors), 0, 255).astype(np.uint8)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(triangles)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vertex_rows = np.zeros(len(vertices), [("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vertex_rows["xyz"], vertex_rows["rgb"] = vertices, colors
    face_rows = np.zeros(len(triangles), [("n", "u1"), ("index", "<i4", 3)])
    face_rows["n"], face_rows["index"] = 3, triangles
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex_rows.tobytes())
        f.write(face_rows.tobytes())
    return path


def read_ply(path):
    """(vertices [V, 3], triangles [T, 3], colors [V, 3] uint8) of a PLY that write_ply wrote."""
    data = pathlib.Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    vertex_rows = np.frombuffer(data, [("xyz", "<f4", 3), ("rgb", "u1", 3)], counts["vertex"], end)
    offset = end + vertex_rows.nbytes
    face_rows = np.frombuffer(data, [("n", "u1"), ("index", "<i4", 3)], counts["face"], offset)
    return vertex_rows["xyz"].astype(np.float64), face_rows["index"].astype(np.int64), vertex_rows["rgb"]
