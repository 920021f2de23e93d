"""Images of the atlas's pages as data URIs, so each page is one self-contained file: the Neuron Feature and the
layer index's small thumbnails (area-averaged down to fit a square) as PNG, at their own pixels (lossless); the
exemplar crops, which are photographs, as JPEG (quality 85): a 128 px crop of a scene is 6.4 KB as JPEG and 24.7 KB as
PNG (mean of 20 Intel scenes), and a layer of 1,280 units has about 10,000 crops."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

THUMBNAIL_PX = 32  # the layer index's NF thumbnails fit in a square this wide
# zlib level: lossless at any level; 1 encodes a 128 px photo crop ~1.7x faster than the default 6 for ~4% more bytes
# (a layer of 1,280 units has ~11,500 crops to encode)
COMPRESS_LEVEL = 1
JPEG_QUALITY = 85


def png_bytes(pixels: np.ndarray) -> bytes:
    """An RGB uint8 array [h, w, 3] as PNG."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    image.save(buffer, format="PNG", compress_level=COMPRESS_LEVEL)
    return buffer.getvalue()


def jpeg_uri(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """The array as a JPEG data URI (for photographs: lossy, about a quarter of the PNG's bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def data_uri(pixels: np.ndarray) -> str:
    """The array as a PNG data URI, its pixels unchanged."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_PX) -> np.ndarray:
    """The image shrunk (each output pixel the mean of the input pixels it covers) to fit in size x size, its aspect
    kept; an image already that small is returned as it is."""
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return np.asarray(pixels, dtype=np.uint8)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    return np.asarray(image.resize(shape, Image.Resampling.BOX))
