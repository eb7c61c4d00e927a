"""Fused CPU kernels for the warp (warp_kernels.cc), compiled on first use.

`fused_ops()` returns the loaded op library, or None when the kernels are switched off or cannot
be built; `normalized_faces.warp` then composes TF ops instead (same function, same gradients,
slower). The library is compiled once per kernel source, TensorFlow build and compiler flags with
the system's C++ compiler against the installed TensorFlow's headers (`tf.sysconfig`), into
`$NORMALIZED_FACES_CACHE` or `~/.cache/normalized_faces`, and reused from there: nothing is
downloaded. `-march=native`: the cached library is built for the machine that compiles it.

NORMALIZED_FACES_WARP_KERNELS=tf in the environment switches the fused kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import tensorflow as tf

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


def library_path(compiler: str) -> pathlib.Path:
    """Where the library for this source, TensorFlow and compiler lives."""
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        tf.__version__.encode(),
        tf.sysconfig.get_lib().encode(),
        " ".join(COMPILE_FLAGS + tuple(tf.sysconfig.get_compile_flags())).encode(),
        compiler.encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / key.hexdigest()[:16] / "warp_kernels.so"


def build(compiler: str, target: pathlib.Path) -> None:
    """Compiles warp_kernels.cc to `target` (atomically: a killed build leaves no half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
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
        if not target.exists():
            logging.info("normalized_faces: compiling the fused warp kernels (once) -> %s", target)
            build(compiler, target)
        ops = tf.load_op_library(str(target))
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
