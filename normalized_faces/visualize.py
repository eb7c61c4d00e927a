"""Pictures people look at: landmarks drawn on faces, flow fields as colours, labelled image grids.

All functions take and return numpy arrays: images uint8 RGB [H, W, 3] (float [0, 1] inputs are
converted), landmarks (x, y) pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from normalized_faces import landmarks as lm

# Polylines of the 68-point layout, for drawing a face's outline rather than loose dots.
_CONTOURS = [
    (lm.JAW, False),
    (lm.RIGHT_BROW, False),
    (lm.LEFT_BROW, False),
    (lm.NOSE_BRIDGE, False),
    (lm.NOSE_BOTTOM, False),
    (lm.RIGHT_EYE, True),
    (lm.LEFT_EYE, True),
    (lm.OUTER_MOUTH, True),
    (lm.INNER_MOUTH, True),
]


def to_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_landmarks(image, points, color=(255, 40, 40), radius=None, contours=True) -> np.ndarray:
    """A copy of `image` with `points` drawn; 68-point sets also get their contours."""
    canvas = to_uint8(image).copy()
    points = np.asarray(points, np.float64)
    radius = radius or max(1, int(round(canvas.shape[0] / 150)))
    # cv2 draws at integer coordinates; shift=4 keeps 1/16 px precision.
    fixed = np.round(points * 16).astype(np.int32)
    if contours and len(points) == lm.NUM_LANDMARKS:
        for index_range, closed in _CONTOURS:
            cv2.polylines(canvas, [fixed[index_range.start : index_range.stop]], closed, color, 1, cv2.LINE_AA, shift=4)
    for x, y in fixed:
        cv2.circle(canvas, (int(x), int(y)), radius * 16, color, -1, cv2.LINE_AA, shift=4)
    return canvas


def flow_to_rgb(flow, max_magnitude=None) -> np.ndarray:
    """Colour-codes a [H, W, 2] (x, y) flow: hue = direction, saturation = magnitude (white = still)."""
    flow = np.asarray(flow, np.float64)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    max_magnitude = max_magnitude or max(magnitude.max(), 1e-6)
    angle = np.arctan2(flow[..., 1], flow[..., 0])
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = ((angle + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    hsv[..., 1] = np.clip(magnitude / max_magnitude * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def draw_flow_arrows(image, flow, step=16, color=(0, 0, 0)) -> np.ndarray:
    """Arrows every `step` px showing where each pixel's content came from -> where it is now."""
    canvas = to_uint8(image).copy()
    height, width = flow.shape[:2]
    for y in range(step // 2, height, step):
        for x in range(step // 2, width, step):
            dx, dy = flow[y, x]
            if dx * dx + dy * dy < 0.25:
                continue
            cv2.arrowedLine(
                canvas, (int(round(x - dx)), int(round(y - dy))), (x, y), color, 1, cv2.LINE_AA, tipLength=0.3
            )
    return canvas


def image_grid(rows, labels=None, column_titles=None, scale=1, gap=4, background=255) -> np.ndarray:
    """Tiles rows of images into one sheet (cells sized as the first image x scale), with optional labels."""
    rows = [[to_uint8(image) for image in row] for row in rows]
    height, width = rows[0][0].shape[:2]
    height, width = height * scale, width * scale
    columns = max(len(row) for row in rows)
    label_width = 0 if not labels else 8 + 7 * max(len(label) for label in labels)
    title_height = 0 if not column_titles else 18
    sheet = np.full(
        (title_height + len(rows) * (height + gap) + gap, label_width + columns * (width + gap) + gap, 3),
        background,
        np.uint8,
    )
    for c, title in enumerate(column_titles or []):
        x = label_width + gap + c * (width + gap)
        cv2.putText(sheet, title, (x + 2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        y = title_height + gap + r * (height + gap)
        if labels:
            cv2.putText(
                sheet, labels[r], (4, y + height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA
            )
        for c, image in enumerate(row):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            if image.shape[:2] != (height, width):  # cells take the first image's size (times scale)
                image = cv2.resize(
                    image, (width, height), interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA
                )
            x = label_width + gap + c * (width + gap)
            sheet[y : y + height, x : x + width] = image
    return sheet


def write_png(path, image) -> None:
    """Writes an RGB image (uint8 or float [0, 1]) as PNG, raising if the write fails. Atomic: a
    temporary name, then a rename, so no reader (or a second run into the folder) sees half a file."""
    from normalized_faces.batch import write_bytes_atomically

    encoded, data = cv2.imencode(".png", cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR))
    if not encoded:
        raise OSError(f"could not encode {path} as PNG")
    write_bytes_atomically(path, data.tobytes())


def checkerboard_ratio(image, band: int = 6) -> float:
    """Power at the period-2 frequencies over the mean power of the `band` frequencies just below.

    image: [S, S(, C)], S even. Natural images and smooth renders give well under 1 (power falls
    with frequency); a transposed-convolution checkerboard concentrates power at period 2 and
    gives many times 1 (the demo model's textures: 15-18).
    """
    gray = np.asarray(image, np.float64)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    power = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
    half = gray.shape[0] // 2
    nyquist = power[half, :].sum() + power[:, half].sum()
    below = power[half - band - 2 : half - 2, :].sum() / band + power[:, half - band - 2 : half - 2].sum() / band
    return float(nyquist / below)


def label_image(image, text: str) -> np.ndarray:
    """A copy of the image with `text` written on a white strip at its top."""
    image = to_uint8(image).copy()
    cv2.rectangle(image, (0, 0), (image.shape[1], 16), (255, 255, 255), -1)
    cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return image
