"""Turning one decoded photo into upright 8-bit RGB, and spotting HEIF files Pillow cannot open.

These are the format-specific parts of subject photo loading (``cascade_booth.images``), kept apart
from the folder walk and the per-file checks there: EXIF rotation, 16-bit greyscale, CMYK (through
its ICC profile), transparency composited over a background, and HEIC/HEIF detection with the
optional ``pillow-heif`` plugin. :class:`BadImage` is the one error these raise: a file is unusable.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageOps

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
                          b"msf1"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
HEIF_HINT = (
    "HEIC/HEIF photos are not supported without the pillow-heif plugin; convert it to JPEG or PNG "
    "(e.g. macOS `sips -s format jpeg IN --out OUT.jpg`, or `heif-convert IN OUT.jpg`) "
    "or `pip install pillow-heif`"
)


class BadImage(Exception):
    """One file is unusable; the message is the human-readable reason."""


def is_heif(head: bytes) -> bool:
    """True if the bytes start an ISO-BMFF ``ftyp`` box of a HEIF/HEIC (not AVIF) file."""
    if head[4:8] != b"ftyp" or head[8:12] not in _HEIF_BRANDS:
        return False
    box_size = int.from_bytes(head[0:4], "big")
    return b"avif" not in head[16:box_size]


@functools.lru_cache(maxsize=1)
def heif_support() -> bool:
    """Register the optional pillow-heif opener; False when it is not installed."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def normalize(img: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    """Return an upright 8-bit RGB copy of a decoded image, appending notes as needed."""
    upright = _exif_upright(img, notes)
    if upright.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(upright)
    if upright.mode == "F":
        raise BadImage("floating-point pixel data (mode F) is not supported; export it as 8-bit RGB")
    if upright.mode in _ALPHA_MODES or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append(f"transparent pixels composited over background RGB{tuple(background)}")
        flat = Image.new("RGB", rgba.size, tuple(background))
        flat.paste(rgba.convert("RGB"), mask=alpha)
        return flat
    if upright.mode == "CMYK":
        return _cmyk_to_rgb(upright)
    return upright if upright.mode == "RGB" else upright.convert("RGB")


def _exif_upright(img: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag; always returns a copy detached from the file."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not make a good photo unusable
        notes.append(f"could not read EXIF orientation ({exc}); using the image as stored")
        return img.copy()
    return upright if upright is not None else img.copy()


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale (0..65535) to 8 bits by dividing by 257, then to RGB."""
    values = np.asarray(img).astype(np.float64) / 257.0
    eight_bit = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Convert CMYK to sRGB through its embedded ICC profile when possible, else numerically."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms  # optional: needs Pillow built with littlecms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"),
                                                  outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # missing littlecms or a broken profile: fall back below
            pass
    return img.convert("RGB")
