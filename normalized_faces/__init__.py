"""normalized-faces: synthesize normalized faces from facial identity features (Cole et al. 2017).

Modules:
  warp        the differentiable polyharmonic-spline image warp (ops and the SparseImageWarp layer)
  encoders    frozen face-recognition networks behind one interface (dlib ResNet port, FaceNet)
  detection   dlib face detection and 68 landmarks; alignment: the aligned 224 x 224 frame
  data        the TFRecord feature spec shared by data prep's writer and the tf.data reader
  model       encoder head, landmark and texture decoders, the full model with its losses
  train       strategies, checkpoints with auto-resume, summaries (train_main.py is the CLI)
  inference   loading a training run or an exported SavedModel for inference
  cli         the normalize-face command; evaluate: the paper's evaluation; adjust: photo adjustment
  landmarks   the 68-point layout and a frontal template; visualize: grids, landmarks, flows
"""

import os

__version__ = "0.1.0"

# TensorFlow's BFC allocator for CPU tensors unless the user chose (TF_CPU_ALLOCATOR_USE_BFC=false:
# the system's malloc). malloc hands the step's large tensors back to the kernel and maps them again
# every step; on the 2-core machine of the README's "Speed" that was a third of a training process's
# CPU time spent in the kernel. Read when TensorFlow first allocates, so importing this package
# before running any TensorFlow op is enough (train.cpu_allocator() says which one is in use).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
