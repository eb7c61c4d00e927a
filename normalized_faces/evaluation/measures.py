"""Image measures of normalized faces, in NumPy: what a look at the pictures sees, as numbers.

shared_pattern   how much of a set of faces' fine detail is the same on every face (the line the
                 identity loss grows): RMS of the mean high-pass image over the set divided by
                 the mean RMS of each face's own high-pass. Independent detail averages out of
                 the mean like 1 / sqrt(N); a pattern on every face does not. Aligned photos
                 share some structure too (eyes and mouths in place), so read it beside the same
                 measure of aligned photos, at the same N.
sharpness        variance of the Laplacian inside a region (a ratio of two is the sharpness
                 ratio). It also rises with noise and with a shared pattern: read it with SSIM,
                 the shared-pattern measure and the pictures.
ssim             structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01,
                 K2 0.03) of the grey images, averaged inside a region.
mean_lab / delta_e   the region's mean colour in CIE L*a*b* (D65) and CIE76 distance between two.
region masks     face (convex hull of the 68 landmarks) and skin (the face less eyes, brows and mouth).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def _float(images) -> np.ndarray:
    images = np.asarray(images)
    return images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)


def _grey(image) -> np.ndarray:
    image = _float(image)
    return image @ np.array([0.299, 0.587, 0.114]) if image.ndim == 3 else image


def highpass(images, sigma: float = 2.0) -> np.ndarray:
    """[N, H, W, C] (or [H, W, C]) - their Gaussian blur (sigma px), as float in [0, 1] units."""
    images = _float(images)
    spatial = (sigma, sigma, 0) if images.ndim == 3 else (0, sigma, sigma, 0)
    return images - ndimage.gaussian_filter(images, spatial, mode="mirror", truncate=3.0)


def shared_pattern(images, sigma: float = 2.0, mask=None) -> float:
    """RMS(mean_n highpass(image_n)) / mean_n RMS(highpass(image_n)), inside `mask` ([H, W] bool) if given.

    Args:
      images: [N, H, W, C] uint8 or float in [0, 1], N >= 2, all in one frame.
    Returns:
      A ratio in (0, 1]: 1 when every image has the same fine detail, ~1 / sqrt(N) when none is shared.
    """
    images = np.asarray(images)
    if len(images) < 2:
        raise ValueError("shared_pattern needs at least 2 images")
    detail = highpass(images, sigma)
    if mask is not None:
        detail = detail[:, np.asarray(mask, bool)]
    common = np.sqrt(np.mean(np.square(detail.mean(axis=0))))
    own = np.mean([np.sqrt(np.mean(np.square(d))) for d in detail])
    return float(common / own) if own > 0 else 0.0


def _polygon_mask(points, size) -> np.ndarray:
    mask = np.zeros([size, size], np.uint8)
    hull = cv2.convexHull(np.round(np.asarray(points)).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def face_mask(landmarks, size: int) -> np.ndarray:
    """[size, size] bool: the convex hull of the 68 landmarks ([68, 2] (x, y))."""
    return _polygon_mask(landmarks, size)


def skin_mask(landmarks, size: int) -> np.ndarray:
    """The face mask less the eyes, brows and mouth (dilated by 3 px): where skin colour is measured."""
    points = np.asarray(landmarks)
    features = np.zeros([size, size], bool)
    for part in (range(17, 22), range(22, 27), range(36, 42), range(42, 48), range(48, 60)):
        features |= _polygon_mask(points[list(part)], size)
    features = ndimage.binary_dilation(features, iterations=3)
    return face_mask(points, size) & ~features


def sharpness(image, mask=None) -> float:
    """Variance of the grey image's Laplacian (4-neighbour, [0, 1] units) inside `mask`."""
    laplacian = ndimage.laplace(_grey(image), mode="mirror")
    return float(np.var(laplacian[np.asarray(mask, bool)] if mask is not None else laplacian))


def ssim(a, b, mask=None, sigma: float = 1.5) -> float:
    """Mean SSIM of the grey images a and b ([H, W(, 3)], uint8 or [0, 1]) inside `mask`."""
    x, y = _grey(a), _grey(b)
    c1, c2 = 0.01**2, 0.03**2

    def blur(z):
        return ndimage.gaussian_filter(z, sigma, mode="reflect", truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index[np.asarray(mask, bool)].mean() if mask is not None else index.mean())


def mean_lab(image, mask=None) -> np.ndarray:
    """[3] mean CIE L*a*b* (D65; L in 0..100) of an RGB image's pixels inside `mask`."""
    lab = cv2.cvtColor(_float(image).astype(np.float32), cv2.COLOR_RGB2Lab)
    pixels = lab[np.asarray(mask, bool)] if mask is not None else lab.reshape(-1, 3)
    return pixels.mean(axis=0).astype(np.float64)


def delta_e(lab_a, lab_b) -> float:
    """CIE76 colour difference of two L*a*b* colours (about 2.3: just noticeable)."""
    return float(np.linalg.norm(np.asarray(lab_a) - np.asarray(lab_b)))
