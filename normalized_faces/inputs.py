"""What the pipeline reads: a folder tree <root>/<identity>/<photo>, or a manifest.

Manifests (CSV with a header, or JSON lines) have `path` and `identity`, and optionally
`landmarks`: 136 numbers (x0, y0, x1, y1, ...) or 68 [x, y] pairs in the photo's pixels. Photos
with landmarks skip detection (datasets that ship landmarks; synthetic faces). Relative paths are
relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import posixpath

from apache_beam.io.filesystems import FileSystems

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclasses.dataclass(frozen=True)
class PhotoInput:
    path: str
    identity: str
    landmarks: tuple | None = None  # 136 floats when the manifest gives them


def _join(root, *parts):
    return FileSystems.join(root, *parts) if "://" in root else posixpath.join(root, *parts)


def _list_local_folder(root: str) -> list:
    """list_folder on a local disk, following symbolic links: identity folders linked in from
    elsewhere (a usual way to pick a subset of a dataset) and linked photos count like real ones.
    Only two levels are read (<identity>/<photo>), so a link cycle cannot make the walk loop; a
    dangling link is listed and rejected as unreadable by the job, with its path."""
    inputs = []
    for folder in sorted(os.scandir(root), key=lambda e: e.name):
        if folder.name.startswith(".") or not folder.is_dir():  # is_dir follows links
            continue
        for entry in sorted(os.scandir(folder.path), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.is_dir():
                continue
            inputs.append(PhotoInput(posixpath.join(root, folder.name, entry.name), folder.name))
    return inputs


def list_folder(root: str) -> list:
    """Every file below <root>/<identity>/ (any name: non-images are rejected later, not skipped)."""
    root = root.rstrip("/")
    if "://" not in root:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder")
        return _list_local_folder(root)
    matches = FileSystems.match([_join(root, "*", "*")])[0].metadata_list
    inputs = []
    for metadata in matches:
        relative = metadata.path[len(root) + 1 :]
        identity, _, name = relative.partition("/")
        if name and "/" not in name and not name.startswith("."):
            inputs.append(PhotoInput(metadata.path, identity))
    return sorted(inputs, key=lambda p: p.path)


def _parse_landmarks(value, where):
    if value in (None, ""):
        return None
    if isinstance(value, str):
        value = json.loads(value)
    flat = [float(v) for pair in value for v in (pair if isinstance(pair, (list, tuple)) else [pair])]
    if len(flat) != 136:
        raise ValueError(f"{where}: landmarks must be 68 (x, y) pairs, got {len(flat)} numbers")
    return tuple(flat)


def read_manifest(path: str) -> list:
    """Rows of a CSV (header: path,identity[,landmarks]) or JSON-lines manifest."""
    with FileSystems.open(path) as file:
        text = io.TextIOWrapper(file, encoding="utf-8").read()
    base = posixpath.dirname(path)
    rows = []
    if path.endswith((".jsonl", ".json")):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append((number, json.loads(line)))
    else:
        rows = list(enumerate(csv.DictReader(io.StringIO(text)), 2))
    inputs = []
    for number, row in rows:
        where = f"{path}:{number}"
        if not row.get("path") or not row.get("identity"):
            raise ValueError(f"{where}: every manifest row needs 'path' and 'identity'")
        photo = row["path"]
        if "://" not in photo and not posixpath.isabs(photo):
            photo = _join(base, photo)
        inputs.append(PhotoInput(photo, str(row["identity"]), _parse_landmarks(row.get("landmarks"), where)))
    return inputs


def list_inputs(input_path: str) -> list:
    """A folder tree or a manifest file, by what `input_path` is; several, comma-separated, are one
    input (e.g. LFW and a studio set: `lfw/,london_train.csv`). An identity found in two sources is
    refused: the same name in two datasets is rarely the same person."""
    sources = [part for part in input_path.split(",") if part]
    if len(sources) > 1:
        inputs, owner = [], {}
        for source in sources:
            for entry in list_inputs(source):
                first = owner.setdefault(entry.identity, source)
                if first != source:
                    raise ValueError(f"identity {entry.identity!r} is in both {first} and {source}: rename one")
                inputs.append(entry)
        return inputs
    if input_path.endswith((".csv", ".jsonl", ".json")):
        return read_manifest(input_path)
    inputs = list_folder(input_path)
    if not inputs:
        raise FileNotFoundError(f"no photos under {input_path}/<identity>/ (and it is not a .csv/.jsonl manifest)")
    return inputs
