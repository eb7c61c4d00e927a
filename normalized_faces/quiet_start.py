"""TensorFlow imported without its start-up noise on the user's terminal.

Importing TensorFlow (2.21, CPU machine) and initializing its devices writes, from C++ and before
absl's logging is set up (so neither TF_CPP_MIN_LOG_LEVEL nor ABSL_MIN_LOG_LEVEL filter them):

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
  E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

An error-level line on every run of every command, on every machine without a GPU. The commands
call `import_tensorflow()` first: file descriptor 2 goes to a temporary file while TensorFlow loads
and finds its devices, then every captured line that is not one of the known start-up lines below
is written back to stderr, so nothing else is lost. NORMALIZED_FACES_TF_STARTUP=show keeps it all.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\)"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions.*rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
)


def filter_startup_lines(text: str) -> str:
    """The captured start-up output less the known noise lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not STARTUP_NOISE.search(line))


def import_tensorflow():
    """Imports TensorFlow (and lists its devices, which prints the CUDA lines) with the known
    start-up lines removed from stderr; returns the module. A no-op when it is already imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ.get("NORMALIZED_FACES_TF_STARTUP") == "show":
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_startup_lines(capture.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
    return tensorflow
