"""What every photo command shares, so that one bad input costs nothing else.

normalize-face, edit-expression and evaluate take a list of photos from a user and write files for
each. The rules they all follow live here:

  reading     `read_photo_file`: only regular files are read (a FIFO would block forever, a
              folder or a symbolic-link loop raises OSError); any problem is a `RejectedPhoto` with
              the reason, never a traceback;
  faces       `collect_faces`: decode, detect (or take given landmarks) and align every photo, one
              line per photo that fails, progress on long lists;
  output dir  `prepare_output_dir`: created, a folder, writable: checked before any model loads;
  names       `unique_stems`: one file stem per face, the photo's name, with as many of its folders
              as tell it apart from the other inputs of that name; never shared by two faces,
              never one of the command's own files (grid.png, ...), whatever the suffixes each
              face's files add;
  writing     `write_bytes_atomically`: a temporary name in the same folder, then a rename, so a
              killed run or two runs into one folder never leave a half-written file.
"""

from __future__ import annotations

import os
import pathlib
import stat
import sys
import tempfile
import time

import numpy as np

from normalized_faces.photos import RejectedPhoto


class OutputDirError(ValueError):
    """An output folder that cannot be used: the message names it and says why."""


def prepare_output_dir(path) -> pathlib.Path:
    """Creates `path` (and its parents) if needed and checks that files can be written in it.

    Raises:
      OutputDirError: the path is a file, lies under a file, or cannot be written to.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output_dir {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"--output_dir {path}: cannot create it: {error.strerror or error}") from None
    try:  # permission bits do not say it all (read-only mounts, root): try a file
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OutputDirError(f"--output_dir {path}: cannot write in it: {error.strerror or error}") from None
    return path


def usable_output_dir(path, report):
    """prepare_output_dir(path), or None after reporting why not (one line): for the commands,
    which then exit with 2 before loading any model."""
    try:
        return prepare_output_dir(path)
    except OutputDirError as error:
        report(str(error))
        return None


def write_bytes_atomically(path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and a rename."""
    path = pathlib.Path(path)
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        pathlib.Path(partial).unlink(missing_ok=True)
        raise


def read_photo_file(path) -> bytes:
    """The bytes of a photo file.

    Raises:
      RejectedPhoto: "unreadable" (no such file, a folder, a FIFO or device, a link loop, no
      permission) with the reason in its detail.
    """
    try:
        info = os.stat(path)  # follows links: a loop or a dangling link raises here
    except FileNotFoundError:
        raise RejectedPhoto("unreadable", "no such file") from None
    except OSError as error:
        raise RejectedPhoto("unreadable", error.strerror or str(error)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(info.st_mode)
            else "a device or socket"
        )
        raise RejectedPhoto("unreadable", f"{kind}, not a photo file")
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise RejectedPhoto("unreadable", error.strerror or str(error)) from None


class Progress:
    """Progress of a long loop as lines: count, rate and time left, at most one line per `every`
    seconds (and the last item), only when there are at least `minimum` items."""

    def __init__(self, total: int, what: str, report=None, every: float = 5.0, minimum: int = 20):
        self.total, self.what, self.every = total, what, every
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.enabled = total >= minimum
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        self.report(f"{self.what}: {done}/{self.total} ({rate:.1f}/s, ~{left:.0f} s left)")


class FoundFace:
    """One face to work on: where it came from and its aligned crop."""

    def __init__(self, photo_path, index, count, photo, aligned):
        self.photo_path = pathlib.Path(photo_path)
        self.index = index
        self.count = count
        self.photo = photo
        self.aligned = aligned


def collect_faces(paths_and_landmarks, detector_model="auto", report=print, progress=None):
    """Reads, decodes, finds and aligns every face; one line per photo that fails (path and reason).

    Args:
      paths_and_landmarks: [(path, [68, 2] landmarks in the photo's pixels or None to detect)].
      progress: where progress lines go (default: stderr, on lists of 20 photos or more).
    Returns:
      (faces_found: [FoundFace], failed: [path]).
    """
    from normalized_faces import alignment
    from normalized_faces.photos import decode_photo

    detector = None
    faces_found, failed = [], []
    items = list(paths_and_landmarks)
    meter = Progress(len(items), "photos read and faces found", progress)
    for done, (path, landmarks) in enumerate(items, 1):
        meter.update(done - 1)
        try:
            image = decode_photo(read_photo_file(path))
        except RejectedPhoto as rejected:
            if rejected.reason == "unreadable":  # "x.jpg: no such file", "x: a folder, not a photo file"
                report(f"{path}: {rejected.detail}")
            else:
                report(f"{path}: cannot read it: {rejected.reason} ({rejected.detail})")
            failed.append(path)
            continue
        if landmarks is not None:
            faces = [np.asarray(landmarks, np.float64).reshape(68, 2)]
        else:
            if detector is None:
                from normalized_faces.detection import FaceDetector

                detector = FaceDetector(detector_model)
            faces = [face.landmarks for face in detector(image)]
        if not faces:
            report(f"{path}: no face found")
            failed.append(path)
            continue
        if len(faces) > 1:
            report(f"{path}: {len(faces)} faces, working on each (largest first)")
        for index, points in enumerate(faces):
            faces_found.append(FoundFace(path, index, len(faces), image, alignment.align_face(image, points)))
    meter.update(len(items))
    return faces_found, failed


def _distinct_names(paths) -> dict:
    """{path: name} for photos that share a file stem: the fewest trailing folders that tell them
    apart, joined by "_" (person_a/01.jpg, person_b/01.jpg -> person_a_01, person_b_01); paths that
    differ only in their extension keep it (face.webp, face.bmp -> face_webp, face_bmp)."""
    unique = sorted(set(paths))
    if len(unique) == 1:
        return {unique[0]: unique[0].stem}
    parts = {path: path.with_suffix("").parts for path in unique}
    depth = max(len(p) for p in parts.values())
    for k in range(1, depth + 1):
        names = {path: "_".join(part.strip("/") for part in parts[path][-k:] if part.strip("/")) for path in unique}
        if len(set(names.values())) == len(unique):
            return names
    # Same folder and stem: only the extension differs.
    return {path: f"{path.stem}_{path.suffix.lstrip('.').lower()}" if path.suffix else path.stem for path in unique}


def unique_stems(faces_found, suffixes=("",), reserved=()) -> list:
    """A file stem per face that no other face of the run shares.

    The stem is the photo's file name without its extension; photos that share one get the fewest
    folders of their paths that tell them apart (`a/01.jpg`, `b/01.jpg` -> `a_01`, `b_01`) or, in one
    folder, their extension (`face_webp`, `face_bmp`); faces of one photo get `_face<i>`. A stem
    whose files (stem + each of `suffixes`, e.g. "", "_aligned") would meet another face's files or
    a `reserved` name (the command's own files, e.g. "grid") gets `_2`, `_3`, ... until it is unique.
    Names compare case-insensitively (case-insensitive file systems).
    """
    paths = [pathlib.Path(os.path.abspath(found.photo_path)) for found in faces_found]
    by_stem = {}
    for path in paths:
        by_stem.setdefault(path.stem.lower(), []).append(path)
    names = {}
    for group in by_stem.values():
        names.update(_distinct_names(group))
    stems = [
        names[path] + (f"_face{found.index}" if found.count > 1 else "") for path, found in zip(paths, faces_found)
    ]
    taken = {name.lower() for name in reserved}
    unique = []
    for stem in stems:
        candidate, number = stem, 1
        while any((candidate + suffix).lower() in taken for suffix in suffixes):
            number += 1
            candidate = f"{stem}_{number}"
        taken.update((candidate + suffix).lower() for suffix in suffixes)
        unique.append(candidate)
    return unique


__all__ = [
    "FoundFace",
    "OutputDirError",
    "Progress",
    "collect_faces",
    "prepare_output_dir",
    "usable_output_dir",
    "read_photo_file",
    "unique_stems",
    "write_bytes_atomically",
]
