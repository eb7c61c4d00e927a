"""File checksums (no TensorFlow import: the set-up command uses them)."""

from __future__ import annotations

import hashlib


def sha256_of(path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
