"""Photos in: decode a photo's bytes into RGB uint8 by rule, or say exactly why not.

`RejectedPhoto` is the one way any stage says a photo will not be used (decoding here; detection,
alignment and the filters in data_prep.stages; normalize-face's input checks): a short reason code
that the data prep job counts, a detail for people, and the measured values.

Decoding rules (the reason codes raised here):
  empty_file        zero bytes
  not_an_image      no known image format (e.g. a text file named .jpg)
  too_large         the header claims more than `max_pixels` (default 64,000,000: 8000 x 8000; a
                    decompression bomb), checked before any pixel is decoded; a JPEG that large is
                    decoded at 1/2, 1/4 or 1/8 scale instead (libjpeg's DCT scaling: the full image
                    is never in memory) when that brings it under the limit
  corrupt           the format is known but the data does not decode (truncated JPEG, bad PNG)
  too_small         a side shorter than `min_side` pixels (a 1 x 1 image)
Handled, not rejected:
  EXIF orientation  applied, so the face is upright as the camera saw it
  greyscale         converted to RGB (three equal channels; the monochrome filter decides later)
  RGBA / LA / P     alpha composited over white, palette expanded
  16-bit            scaled to 8 bits (grey I;16 and RGB 48-bit PNG)
  CMYK              converted to RGB (JPEG from print workflows)
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000
DEFAULT_MIN_SIDE = 32
JPEG_SCALES = (2, 4, 8)  # the reductions libjpeg decodes directly

# The size check is ours (decode_photo, before any pixel is decoded, with the project's limit in
# its message), so PIL's own (89,478,485 pixels, a warning; twice that, an error) is switched off.
Image.MAX_IMAGE_PIXELS = None


class RejectedPhoto(Exception):
    """A photo that will not be used: `reason` (a short code the job counts, e.g. "corrupt",
    "no_face", "smiling"), `detail` for people, and `values` (measure, threshold, stage...)."""

    def __init__(self, reason: str, detail: str = "", **values):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.values = values


def decode_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Decodes image bytes to [H, W, 3] RGB uint8, upright, following the rules above.

    Raises:
      RejectedPhoto: with reason empty_file, not_an_image, too_large, corrupt or too_small.
    """
    if not data:
        raise RejectedPhoto("empty_file", "the file has zero bytes")
    try:
        # Opening reads only the header: the size is known before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RejectedPhoto("not_an_image", "not a format PIL can identify") from None
    except Exception as error:  # noqa: BLE001 - any header parse failure is a corrupt file
        raise RejectedPhoto("corrupt", f"header unreadable: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        scale = next((s for s in JPEG_SCALES if (width // s) * (height // s) <= max_pixels), None)
        if image.format != "JPEG" or scale is None:
            how = "a JPEG is decoded at 1/8 scale at most" if image.format == "JPEG" else "only JPEGs decode smaller"
            raise RejectedPhoto(
                "too_large",
                f"{width} x {height} is {width * height:,} pixels, more than the {max_pixels:,} this project decodes "
                f"(max_pixels; {how}): downscale the photo first",
                width=width,
                height=height,
            )
        image.draft("RGB", (width // scale, height // scale))  # decoded at 1/scale: never whole in memory
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - truncated or damaged data
        raise RejectedPhoto("corrupt", f"{image.format} data does not decode: {error}") from None
    if min(image.size) < min_side:
        raise RejectedPhoto("too_small", f"{image.size[0]} x {image.size[1]} is smaller than {min_side} px on a side")
    return _to_rgb8(image)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
