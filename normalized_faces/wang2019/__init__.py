"""The label-free variant (Wang, MIT 2019, "Face frontalization and neutral expression generation
from face encodings"): trained on single photos, its output's geometry constrained through a
differentiable landmark regressor, its background whitened by a learned attention mask, and an
LSGAN patch discriminator. It reuses the package's data (photos mode), encoders, warp, training
loop, export and normalize-face; losses.py holds its losses as pure functions."""
