"""normalized-faces: synthesize normalized faces from facial identity features (Cole et al. 2017).

Modules:
  warp: the differentiable polyharmonic-spline image warp (ops and the `SparseImageWarp` layer).
"""

__version__ = "0.1.0"
