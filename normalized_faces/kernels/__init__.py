"""Fused CPU kernels for the warp (warp_kernels.cc), compiled on first use.

`fused_ops()` returns the loaded op library, or None when the kernels are switched off or cannot
be built; `normalized_faces.warp` then composes TF ops instead (same function, same gradients,
slower). The library is compiled with the system's C++ compiler against the installed TensorFlow's headers
(`tf.sysconfig`) into `$NORMALIZED_FACES_CACHE` or `~/.cache/normalized_faces`, and reused from
there: nothing is downloaded. A library is native code that runs when loaded, so the cache is
guarded (`_load`):

  key       its folder is named by the kernel source, TensorFlow build, compiler and flags *and*
            what `-march=native` means on this CPU (the compiler's own expansion of it): a home
            folder shared by an AVX2 and an AVX-512 machine holds one library for each, and
            neither loads the other's;
  private   the cache folders are created owner-only (0700); a folder or library owned by
            someone else, or writable by group or others, is refused;
  checked   the build records the library's sha256 beside it; a library without that record, or
            whose bytes differ (planted, damaged, half-copied), is not loaded;
  complete  a loaded library that lacks one of the four ops is not used.

Whenever one of these fails, or the compiler is missing or fails, one warning line says why and
the warp runs on TF ops instead.

NORMALIZED_FACES_WARP_KERNELS=tf in the environment switches the fused kernels off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import threading

import tensorflow as tf

from normalized_faces.checksums import sha256_of

SOURCE = pathlib.Path(__file__).with_name("warp_kernels.cc")
ENVIRONMENT_SWITCH = "NORMALIZED_FACES_WARP_KERNELS"
# -mno-avx512fp16: TF's bundled Eigen does not compile its AVX512-FP16 packet maths with GCC 12.
# -fno-math-errno lets sqrt vectorize; -fopenmp-simd honours the kernels' `omp simd` pragmas
# (vectorization hints only: no OpenMP runtime, TF's thread pool does the threading).
COMPILE_FLAGS = (
    "-shared",
    "-fPIC",
    "-O3",
    "-march=native",
    "-mno-avx512fp16",
    "-fno-math-errno",
    "-fopenmp-simd",
    "-w",
)

_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> pathlib.Path:
    root = os.environ.get("NORMALIZED_FACES_CACHE") or pathlib.Path.home() / ".cache" / "normalized_faces"
    return pathlib.Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


OPS = ("nf_grid_spline", "nf_grid_spline_grad", "nf_warp_sample", "nf_warp_sample_grad")
CHECKSUM_SUFFIX = ".sha256"


class UntrustedLibrary(RuntimeError):
    """A cached library (or its folder) that is not this installation's own build."""


@functools.cache
def native_target_flags(compiler: str) -> str:
    """What `-march=native` expands to on this CPU for `compiler` (e.g. "-march=znver1 -mavx2
    -mno-avx512f ..."), from the compiler's own dry run; "" if it cannot say."""
    try:
        result = subprocess.run(
            [compiler, "-march=native", "-###", "-E", "-x", "c++", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in result.stderr.splitlines():
        if "cc1" in line and "-march=" in line:  # the compiler proper's command line
            return " ".join(t.strip('"') for t in line.split() if t.strip('"').startswith(("-m", "--param")))
    return ""


def library_path(compiler: str) -> pathlib.Path:
    """Where the library for this source, TensorFlow, compiler, flags and CPU lives."""
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        tf.__version__.encode(),
        tf.sysconfig.get_lib().encode(),
        " ".join(COMPILE_FLAGS + tuple(tf.sysconfig.get_compile_flags())).encode(),
        compiler.encode(),
        native_target_flags(compiler).encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / key.hexdigest()[:16] / "warp_kernels.so"


def make_private_dir(folder: pathlib.Path) -> None:
    """Creates `folder` and its missing parents owner-only (0700)."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        parent.mkdir(mode=0o700, exist_ok=True)


def check_private(path: pathlib.Path) -> None:
    """Raises UntrustedLibrary unless `path` is owned by this user and not writable by others."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedLibrary(f"{path} is a symbolic link")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise UntrustedLibrary(f"{path} belongs to user {info.st_uid}, not to this user ({os.getuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedLibrary(f"{path} is writable by {'others' if info.st_mode & stat.S_IWOTH else 'its group'}")


def verify_library(target: pathlib.Path) -> None:
    """Raises UntrustedLibrary unless `target`, its folder and the cache folder are private and its
    bytes match the sha256 its build recorded."""
    for path in (cache_dir(), target.parent, target):
        check_private(path)
    record = target.with_name(target.name + CHECKSUM_SUFFIX)
    if not record.exists():
        raise UntrustedLibrary(f"{target} has no build record ({record.name}): not built by this installation")
    if record.read_text().strip() != sha256_of(target):
        raise UntrustedLibrary(f"{target} differs from the library its build recorded (sha256 mismatch)")


def build(compiler: str, target: pathlib.Path) -> None:
    """Compiles warp_kernels.cc to `target` (atomically: a killed build leaves no half file) and
    records its sha256 beside it."""
    make_private_dir(target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = pathlib.Path(scratch) / target.name
        command = [
            compiler,
            *COMPILE_FLAGS,
            *tf.sysconfig.get_compile_flags(),
            str(SOURCE),
            "-o",
            str(partial),
            *tf.sysconfig.get_link_flags(),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        os.chmod(partial, 0o700)
        record = pathlib.Path(scratch) / (target.name + CHECKSUM_SUFFIX)
        record.write_text(sha256_of(partial) + "\n")
        os.replace(record, target.with_name(record.name))
        os.replace(partial, target)


@tf.autograph.experimental.do_not_convert  # called while tracing: plain Python, nothing to convert
def fused_ops():
    """The op library (ops nf_grid_spline, nf_warp_sample and their gradients) or None."""
    if os.environ.get(ENVIRONMENT_SWITCH, "fused") == "tf":
        return None
    with _lock:
        if "ops" not in _state:
            _state["ops"] = _load()
        return _state["ops"]


def _load():
    compiler = _compiler()
    if compiler is None:
        logging.warning("normalized_faces: no C++ compiler (g++) found: the warp runs on TF ops (slower)")
        return None
    target = library_path(compiler)
    try:
        make_private_dir(cache_dir())
        if not target.exists() and not target.is_symlink():
            logging.info("normalized_faces: compiling the fused warp kernels (once) -> %s", target)
            build(compiler, target)
        verify_library(target)  # before loading: a library's constructors run as it loads
        ops = tf.load_op_library(str(target))
        missing = [name for name in OPS if not hasattr(ops, name)]
        if missing:
            raise UntrustedLibrary(f"{target} lacks the ops {', '.join(missing)}")
    except UntrustedLibrary as error:
        logging.warning(
            "normalized_faces: not using the cached warp kernels (%s); the warp runs on TF ops. "
            "Delete %s to rebuild them.",
            error,
            target.parent,
        )
        return None
    except (RuntimeError, OSError, tf.errors.NotFoundError) as error:
        logging.warning("normalized_faces: the fused warp kernels are unavailable, the warp runs on TF ops: %s", error)
        return None
    _register_gradients(ops)
    return ops


def _register_gradients(ops) -> None:
    @tf.RegisterGradient("NfGridSpline")
    def _grid_spline_grad(op, grad):
        return [*ops.nf_grid_spline_grad(grad, *op.inputs), None]  # no gradient to the floor

    @tf.RegisterGradient("NfWarpSample")
    def _warp_sample_grad(op, grad):
        grad_image, grad_flow = ops.nf_warp_sample_grad(grad, *op.inputs)
        return [grad_image, None, grad_flow]  # the base points are constants
