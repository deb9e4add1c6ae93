"""Turn the bytes of one input file into a square RGB sample image and its metadata.

The steps follow SAM's data transforms: decode by content with one of the DECODE_FORMATS
decoders (the file extension is ignored), apply the EXIF orientation, convert to 8-bit RGB, crop
the centre square (or reject a non-square image), then resize to the target resolution with PIL's
bilinear filter. With an aligner, the FFHQ-style face crop replaces the centre crop and the resize.

An image smaller than the resolution is upsampled with the same filter and kept; its metadata has
`"upsampled": true` and the build summary counts it.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shards.errors import SkippedInput

JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION_TAG = 0x0112
# PIL decoders tried on input files. Naming them keeps PIL from handing other content, such as
# PostScript (which PIL renders with the external Ghostscript program), to any other decoder.
DECODE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")


def configure_pil() -> None:
    """Set PIL's process-wide decoding switches for a build process or worker."""
    # A truncated file must fail loudly, never become a half-grey sample.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # `open_image` checks the pixel limit with a clear skip reason, so PIL's own check is off.
    Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageOptions:
    """How every sample image is made: side in pixels, encoding, crop rule and pixel limit."""

    resolution: int = 256
    image_format: str = "jpg"
    crop: str = "center"
    max_pixels: int = 100_000_000


@dataclass
class Sample:
    """One finished sample: the encoded image and the metadata stored as `<key>.json`."""

    image_bytes: bytes
    meta: dict

    def meta_bytes(self) -> bytes:
        """Return the metadata as canonical JSON (sorted keys, ASCII only)."""
        return json.dumps(self.meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# An aligner maps an upright RGB image to (aligned image at the resolution, metadata to record).
Aligner = Callable[[Image.Image], "tuple[Image.Image, dict]"]


def make_sample(data: bytes, options: ImageOptions, aligner: Aligner | None = None) -> Sample:
    """Decode, orient, convert, crop and resize one image, raising SkippedInput when it cannot."""
    image = open_image(data, options.max_pixels)
    meta = {"format": image.format, "original_size": list(image.size), "mode": image.mode}
    load_pixels(image)
    image, meta["exif_orientation"] = apply_exif_orientation(image)
    rgb = to_rgb(image)

    if aligner is not None:
        resized, meta["align"] = aligner(rgb)
        meta["crop_box"] = None
        meta["upsampled"] = bool(meta["align"].get("upsampled", False))
    else:
        box = square_box(rgb.size, options.crop)
        side = box[2] - box[0]
        meta["crop_box"] = list(box) if side != rgb.size[0] or side != rgb.size[1] else None
        meta["upsampled"] = side < options.resolution
        resized = rgb.crop(box).resize((options.resolution, options.resolution), Image.BILINEAR)
    return Sample(image_bytes=encode_image(resized, options.image_format), meta=meta)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the image header and reject images with more than `max_pixels` before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except UnidentifiedImageError as exc:
        raise SkippedInput("not_image", f"not an image in a supported format ({', '.join(DECODE_FORMATS)}): "
                                        "no decoder recognises its content") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise SkippedInput("decode_error", f"invalid image header: {exc}") from exc

    width, height = image.size
    if width * height > max_pixels:
        raise SkippedInput(
            "too_many_pixels",
            f"too many pixels: {width}x{height} = {width * height} > --max-pixels {max_pixels} "
            "(possible decompression bomb); raise --max-pixels if the image is genuine",
        )
    if width == 0 or height == 0:
        raise SkippedInput("decode_error", f"invalid image size {width}x{height}")
    return image


def load_pixels(image: Image.Image) -> None:
    """Decode the pixel data, classifying a failure as truncated or otherwise corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        if "truncated" in message.lower() or isinstance(exc, EOFError):
            raise SkippedInput("truncated", f"truncated image: {message or type(exc).__name__}") from exc
        raise SkippedInput("decode_error", f"corrupt image data: {message}") from exc


def apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, int]:
    """Return the upright image and the EXIF orientation that was applied (1 when none)."""
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        # NOTE: an unreadable EXIF block is ignored and the stored pixel order is kept.
        return image, 1
    if orientation not in range(2, 9):
        return image, 1
    return ImageOps.exif_transpose(image), orientation


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16-bit grey by 1/257 instead of clipping it.

    Alpha is dropped, as PIL's `convert("RGB")` in SAM's transforms does.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL's own conversion of I;16 to L or RGB clips at 255, so scale the 0..65535 range.
        # NOTE: mode "I" is taken as 16-bit data; 32-bit values above 65535 saturate at white.
        values_16bit = np.asarray(image, dtype=np.float64)
        grey_8bit = np.clip(np.rint(values_16bit / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey_8bit, mode="L").convert("RGB")
    if image.mode == "F":
        raise SkippedInput("unsupported_mode", "unsupported pixel mode F (32-bit float) without a known value range")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return image.convert("RGB")
    except ValueError as exc:
        raise SkippedInput("unsupported_mode", f"unsupported pixel mode {image.mode}: {exc}") from exc


def square_box(size: tuple[int, int], crop: str) -> tuple[int, int, int, int]:
    """Return the centred square (left, top, right, bottom), or reject a non-square image."""
    width, height = size
    if width == height:
        return (0, 0, width, height)
    if crop == "reject":
        raise SkippedInput("not_square", f"not square ({width}x{height}); --crop center would keep its centre square")
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encode with fixed settings, so the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    elif image_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    else:
        raise ValueError(f"unknown image format {image_format!r}; use jpg or png")
    return buffer.getvalue()
