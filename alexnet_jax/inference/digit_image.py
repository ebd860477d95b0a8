"""A user's image of a digit brought to MNIST's own form, the way LeCun et al. normalised the originals.

Decoding: any file Pillow reads (`read_image`: PNG, JPEG, BMP, GIF, TIFF, ...), or encoded bytes
(`decode_image`, which can be limited to some formats, refuse large images before decoding them and scale
them down while they are still 8-bit). Then `preprocess`, for any size, colour or greyscale, dark ink on
light paper or light ink on a dark background:

1. greyscale in [0, 1] (transparent pixels count as white paper);
2. polarity: the median of the image's border is the background; a light background is inverted, so ink
   is light on dark as in MNIST; the background level is subtracted and the contrast stretched to [0, 1];
3. crop to the bounding box of the ink (pixels above `INK_THRESHOLD`);
4. scale the longest side to 20 pixels, keeping the aspect ratio (Lanczos, anti-aliased);
5. paste into a 28x28 field so that the ink's centre of mass sits at its centre (pixel 14, 14: where
   the MNIST digits' centre of mass lies on average).

`predict` (one digit per image), `read_number` (a string of digits) and `serve` share it, so that every
entry point sees a digit exactly as the others do.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

MNIST_SIZE = 28
DIGIT_BOX = 20  # MNIST digits are scaled so that their longest side fits 20 pixels
CENTRE = 14.0  # mean centre of mass of the MNIST test digits, in pixel indices
INK_THRESHOLD = 0.2  # of the stretched contrast: what counts as ink for the bounding box
MIN_CONTRAST = 0.08  # below this the image holds no ink at all


class ImageError(ValueError):
  """An image that cannot be read or holds no digit."""


class ImageTooLargeError(ImageError):
  """An image over the size a caller accepts."""


class UnsupportedFormatError(ImageError):
  """Bytes that are not in one of the formats a caller accepts."""


# The first bytes of the formats `decode_image(formats=...)` can be limited to: anything else is refused
# from these bytes alone, before any of Pillow's decoders reads it.
SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}
# Modes that Image.reduce averages correctly; others (palette, 1-bit, 16-bit) are converted first.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK")


def read_image(path: str) -> np.ndarray:
  """The file as a float greyscale array in [0, 1]; transparency is composited onto white."""
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise ImageError(f"{path}: empty file")
  try:
    with Image.open(path) as opened:
      return _greyscale(opened)
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise ImageError(f"{path}: is a directory") from None
  except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for unknown, truncated, corrupt files
    raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def decode_image(data: bytes, name: str = "image", max_side: int | None = None,
                 formats: Sequence[str] | None = None, work_side: int | None = None) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) -> greyscale in [0, 1], as `read_image` reads a file.

  `max_side` refuses larger images (ImageTooLargeError) before their pixels are decoded. `formats` (names
  in `SIGNATURES`) refuses bytes in any other format (UnsupportedFormatError) before any decoder sees them.
  `work_side` scales larger images down to at most that many pixels a side while they are still 8-bit
  (JPEG inside the decoder), so that no float copy of a large image is ever made. Any failure of Pillow
  on these bytes is an ImageError: ImageTooLargeError for MemoryError and DecompressionBombError."""
  if not data:
    raise ImageError(f"{name}: empty")
  if formats is not None:
    unknown = [f for f in formats if f not in SIGNATURES]
    if unknown:
      raise ValueError(f"decode_image: no signature known for {unknown}; known: {sorted(SIGNATURES)}")
    if not any(data.startswith(s) for f in formats for s in SIGNATURES[f]):
      raise UnsupportedFormatError(f"{name}: not a {' or '.join(formats)} image (only these are read)")
  try:
    with Image.open(io.BytesIO(data), formats=None if formats is None else list(formats)) as opened:
      width, height = opened.size
      if max_side is not None and max(width, height) > max_side:
        raise ImageTooLargeError(f"{name}: {width}x{height} pixels, more than {max_side} a side")
      return _greyscale(opened, work_side)
  except ImageError:
    raise
  except (MemoryError, Image.DecompressionBombError) as e:
    raise ImageTooLargeError(f"{name}: too large to decode ({type(e).__name__}: {e})") from None
  except Exception as e:  # hostile bytes make Pillow raise many types (OSError, SyntaxError, struct.error,
    # IndexError, NotImplementedError, OverflowError, ...): each one is this input's fault, not the caller's
    raise ImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


def _greyscale(opened: Image.Image, work_side: int | None = None) -> np.ndarray:
  image = opened
  if work_side is not None and max(image.size) > work_side:
    image = _reduced(image, work_side)
  image = ImageOps.exif_transpose(image)  # phone photos: honour the camera's orientation
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    image = image.convert("RGBA")
    paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, image)
  return np.asarray(image.convert("L"), np.float32) / 255.0


def _reduced(opened: Image.Image, work_side: int) -> Image.Image:
  """`opened` at most `work_side` pixels a side, averaged over whole blocks of pixels (Image.reduce: by an
  integer factor, alpha premultiplied). A JPEG is decoded at 1/2, 1/4 or 1/8 scale by its decoder
  (`draft`), so its full-size pixels never exist; the EXIF orientation is kept for `exif_transpose`."""
  width, height = opened.size
  longest = max(width, height)
  opened.draft(None, (max(1, width * work_side // longest), max(1, height * work_side // longest)))
  image = opened
  if image.mode not in _REDUCIBLE_MODES:
    transparent = image.mode == "PA" or "transparency" in image.info
    image = image.convert("RGBA" if transparent else "L")
  factor = math.ceil(max(image.size) / work_side)
  return image.reduce(factor) if factor > 1 else image


def to_greyscale(image: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> (H, W) float32 in [0, 1].

  uint8 is read as 0..255; floats as 0..1 unless their maximum exceeds 1 (then 0..255).
  """
  image = np.asarray(image)
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
    raise ImageError(f"expected an (H, W) or (H, W, 1|3|4) image, got shape {image.shape}")
  if min(image.shape[:2]) == 0:
    raise ImageError(f"empty image of shape {image.shape}")
  scale = 255.0 if image.dtype == np.uint8 or image.max() > 1.0 else 1.0
  image = image.astype(np.float32) / scale
  if image.ndim == 3:
    if image.shape[-1] == 4:  # composite onto white paper, as read_image does
      image = image[..., :3] * image[..., 3:] + (1.0 - image[..., 3:])
    # ITU-R 601 luma, the weights Pillow's convert("L") uses.
    image = image[..., 0] if image.shape[-1] == 1 else image @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(image, 0.0, 1.0)


def _ink(grey: np.ndarray) -> np.ndarray:
  """Light-on-dark ink in [0, 1], background at 0 (steps 1-2)."""
  border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
  background = float(np.median(border))
  if background > 0.5:  # dark ink on light paper
    grey, background = 1.0 - grey, 1.0 - background
  contrast = float(grey.max()) - background
  if contrast < MIN_CONTRAST:
    raise ImageError(f"no ink found (blank image: contrast {contrast:.3f} < {MIN_CONTRAST})")
  return np.clip((grey - background) / contrast, 0.0, 1.0)


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
  rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
  cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
  return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _scale_longest_side(crop: np.ndarray, size: int = DIGIT_BOX) -> np.ndarray:
  height, width = crop.shape
  factor = size / max(height, width)
  new_size = (max(1, round(width * factor)), max(1, round(height * factor)))  # PIL: (width, height)
  scaled = Image.fromarray(crop.astype(np.float32), mode="F").resize(new_size, Image.Resampling.LANCZOS)
  return np.clip(np.asarray(scaled), 0.0, 1.0)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
  height, width = digit.shape
  rows, cols = np.indices(digit.shape)
  mass = digit.sum()
  top = round(CENTRE - (rows * digit).sum() / mass)
  left = round(CENTRE - (cols * digit).sum() / mass)
  # Keep the whole digit inside the field even if its mass is far off its box's centre.
  top, left = min(max(top, 0), MNIST_SIZE - height), min(max(left, 0), MNIST_SIZE - width)
  field = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
  field[top:top + height, left:left + width] = digit
  return field


def preprocess(image: np.ndarray) -> np.ndarray:
  """Any digit image -> MNIST form: (28, 28, 1) uint8, light ink on black, centred by mass."""
  field = _centre_by_mass(_scale_longest_side(_crop_to_ink(_ink(to_greyscale(image)))))
  return np.round(field * 255.0).astype(np.uint8)[..., None]


def preprocess_file(path: str) -> np.ndarray:
  image = read_image(path)
  try:
    return preprocess(image)
  except ImageError as e:
    raise ImageError(f"{path}: {e}") from None
