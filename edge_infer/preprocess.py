"""The one image preprocessing path: any image file -> 224x224x3 uint8 model input.

Training, conversion, the runtime, the server and the benchmarks all call `preprocess_image`
(or `decode_image` + `to_model_input`), so the pixels a model was trained on are the pixels it
serves. Models take these values as float32 0..255 (or uint8 for the int8 model); any further
scaling lives inside the model.

The model sees luminance only (ITU-R 601 luma, repeated in the three channels). B-mode
ultrasound is a grey-scale intensity image: colour in a scan is a display tint of the scanner
or viewer, or a Doppler / annotation overlay, never tissue echo, and a model that could read
it would learn the look of one hospital's screens. Grey images (R = G = B, as nearly all of
BUSI) are unchanged by this: luma of (v, v, v) is exactly v.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from edge_infer.spec import INPUT_SIZE

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

# Ultrasound frames are a few megapixels; the caps bound what one decode can cost in memory.
MAX_PIXELS: int = 16_000_000
MAX_DECODED_BYTES: int = 3 * MAX_PIXELS  # an 8-bit RGB frame at the pixel cap; 16-bit or
# 4-channel images (2-4 bytes a pixel) reach it with fewer pixels
RESAMPLE = Image.Resampling.BILINEAR
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SIXTEEN_BIT_ROWS = 256  # rows scaled to 8 bits at a time (bounds the temporary arrays)
# Pillow's plugins raise almost anything on crafted or damaged data (ValueError for an
# oversized zTXt chunk or a PPM size like '64+48', OSError, SyntaxError, struct.error, ...):
# every exception while opening or decoding becomes the one ImageError "cannot read image".
DAMAGED_IMAGE_ERRORS = (Exception,)
MAX_REASON_CHARS = 160
EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}  # what ImageOps.exif_transpose applies


class ImageError(ValueError):
    """An input that cannot be turned into a model input; the message says why in one line."""


class NotAnImage(ImageError):
    """Bytes no Pillow decoder recognises: a text file, an unsupported format."""


def cannot_read(err: BaseException) -> ImageError:
    """The one-line error for any exception a decoder raised: 'cannot read image: <reason>'."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:MAX_REASON_CHARS]
    return ImageError(f"cannot read image: {reason}")


@dataclass
class DecodedImage:
    """An 8-bit RGB image plus notes on what decoding had to do (e.g. first frame of many)."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise ImageError(f"no such file: {os.fspath(source)}")
        if os.path.isdir(source):
            raise ImageError(f"is a directory, not an image: {os.fspath(source)}")
        if os.path.getsize(source) == 0:
            raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(source)
    except UnidentifiedImageError:
        raise NotAnImage("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression-bomb guard)") from None
    except OSError as err:  # unreadable file, or a decoder that gives up on a damaged header
        raise ImageError(f"cannot read image: {err.strerror or err}") from None
    except DAMAGED_IMAGE_ERRORS as err:
        raise cannot_read(err) from None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey to 8 bits (0..65535 -> 0..255, rounded: (v + 128) // 257 equals
    rint(v / 257) on integers); Pillow's convert would clip instead. Read a strip of rows at a
    time, so no full-size array is made besides the 8-bit result."""
    grey = np.empty((image.height, image.width), dtype=np.uint8)
    for top in range(0, image.height, SIXTEEN_BIT_ROWS):
        bottom = min(top + SIXTEEN_BIT_ROWS, image.height)
        strip = np.asarray(image.crop((0, top, image.width, bottom))).astype(np.int64)
        grey[top:bottom] = np.clip((strip + 128) // 257, 0, 255)
    return Image.fromarray(grey, mode="L").convert("RGB")


def decoded_bytes(image: Image.Image) -> int:
    """Bytes the image's pixels take once decoded in its own mode (bands x sample size)."""
    mode = ImageMode.getmode(image.mode)
    return image.width * image.height * len(mode.bands) * np.dtype(mode.typestr).itemsize


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on black (outside the scan)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if image.mode == "F":
        raise ImageError("floating-point images are not supported")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied La only to LA
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(source: ImageSource) -> DecodedImage:
    """Open, verify and orient an image (EXIF), returning 8-bit RGB and any notes for the user."""
    image = _open(source)
    if image is source:
        return _decode(image)
    with image:  # close the file we opened: Pillow keeps it open for multi-frame or bad images
        return _decode(image)


def _decode(image: Image.Image) -> DecodedImage:
    """Size checks, first frame, EXIF orientation and RGB conversion of an opened image."""
    notes: list[str] = []
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels: {width}x{height}")
    try:  # counting frames reads every frame header: a damaged one fails here, not in load()
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            image.seek(0)
        size = decoded_bytes(image)  # the mode is known from the header, before any pixel
        if size > MAX_DECODED_BYTES:
            raise ImageError(f"image too large: {width}x{height} {image.mode} is "
                             f"{size / 2**20:.0f} MiB decoded (limit "
                             f"{MAX_DECODED_BYTES / 2**20:.0f} MiB)")
        image.load()
        # orient after the conversion: exif_transpose copies even an upright image, a
        # second full-size copy of a 16-bit one
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        rgb = _to_rgb(image)
        if orientation in ORIENTATIONS:
            rgb = rgb.transpose(ORIENTATIONS[orientation])
    except ImageError:
        raise
    except DAMAGED_IMAGE_ERRORS as err:
        raise cannot_read(err) from None
    if frames > 1:
        notes.append(f"multi-frame image ({frames} frames): used the first frame")
    return DecodedImage(rgb, notes)


def to_model_input(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """An RGB (or L) image -> the model input: luma resized to size x size (the runtime's 224;
    other sizes only for training with `--image-size`), in 3 channels, uint8."""
    if image.mode not in ("RGB", "L"):
        raise ImageError(f"expected an RGB image, got mode {image.mode}; call decode_image first")
    luma = image.convert("L").resize((size, size), RESAMPLE)
    return np.repeat(np.asarray(luma, dtype=np.uint8)[..., None], 3, axis=2)


def preprocess_image(source: ImageSource, size: int = INPUT_SIZE) -> np.ndarray:
    """Path, bytes, file object or PIL image -> the model input (size, size, 3) uint8."""
    return to_model_input(decode_image(source).image, size)
