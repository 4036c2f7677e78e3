"""Subject photo loading and validation, run before any model loads.

A bad folder fails in seconds with one message naming every offending file. Each photo is
fully decoded (truncation is an error), bomb-guarded, EXIF-rotated and normalised to 8-bit
RGB (CMYK converted, transparency composited, 16-bit scaled, animations cut to frame 0).
The per-format conversions and HEIF detection are in ``cascade_booth.imageformats``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from cascade_booth.errors import InputError
from cascade_booth.imageformats import HEIF_HINT, BadImage, heif_support, is_heif, normalize
from cascade_booth.paths import path_problem

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp",
                                            ".tif", ".tiff", ".avif", ".heic", ".heif", ".hif"})
"""File suffixes (lower case) recognised as photos. HEIC/HEIF need the ``pillow-heif`` plugin."""

HEIF_SUFFIXES: frozenset[str] = frozenset({".heic", ".heif", ".hif"})

SIDECAR_SUFFIXES: frozenset[str] = frozenset({".txt", ".json", ".jsonl", ".md", ".rst", ".yaml", ".yml",
                                              ".toml", ".csv", ".tsv", ".xmp", ".aae", ".ini", ".log", ".db"})
"""Suffixes of non-image files (captions, metadata, notes) that are skipped, not checked."""

_SIDECAR_NAME = re.compile(r"^(license|licence|copying|readme|notice|attribution)([-_. ].*)?$", re.I)

MAX_PIXELS: int = 89_478_485
"""Decompression-bomb guard: images with more pixels than this (~89 MP) are refused."""

_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


@dataclass
class SubjectImage:
    """One validated photo: ``image`` is upright 8-bit RGB; ``sha256`` hashes its size and pixels
    (not the file bytes), so re-encoded or metadata-only copies share a hash."""

    path: Path
    image: Image.Image
    sha256: str


def load_subject_images(
    folder: Path, min_size: int, background: tuple[int, int, int] = (255, 255, 255)
) -> tuple[list[SubjectImage], list[str]]:
    """Load and validate every photo in ``folder`` (not recursive), sorted by file name.

    Hidden files and sidecars (captions, metadata, LICENSE, README) are skipped; every other
    file must be a usable image whose shorter side is at least ``min_size``. Returns the images
    and warnings (each naming its file). Raises :class:`InputError` if the folder is missing or
    has no images, or naming every bad file with its reason.
    """
    folder = Path(folder)
    _check_args(min_size, background)
    candidates, notes = _list_candidates(folder)
    loaded: list[SubjectImage] = []
    problems: list[str] = []
    for path in candidates:
        try:
            image, file_notes = _load_one(path, min_size, background)
        except BadImage as exc:
            problems.append(f"  - {path.name}: {exc}")
            continue
        notes.extend(f"{path.name}: {note}" for note in file_notes)
        loaded.append(SubjectImage(path=path, image=image, sha256=_pixel_hash(image)))
    if problems:
        raise InputError(
            f"{len(problems)} of {len(candidates)} file(s) in {folder} cannot be used as subject photos:\n"
            + "\n".join(problems)
            + "\nFix or remove these files and try again."
        )
    notes.extend(_duplicate_warnings(loaded))
    return loaded, notes


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Resample the largest centred square of ``image`` to ``size`` x ``size``.

    Crop and resize are one antialiased Lanczos step with sub-pixel accurate centring.
    """
    _check_size(size)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), resample=Image.Resampling.LANCZOS, box=box)


def open_rgb(path: Path) -> Image.Image:
    """A generated image (class image, cached SR output) read fully into memory as RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop and resize ``image`` to a float32 tensor [3, size, size] in [-1, 1].

    Non-RGB input gets a plain ``convert("RGB")``; images from :func:`load_subject_images`
    are already RGB with proper alpha/16-bit handling.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.array(center_crop_resize(rgb, size), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32)
    return (tensor / 127.5 - 1.0).contiguous()


def _check_args(min_size: int, background: tuple[int, int, int]) -> None:
    """Reject programmer errors in the arguments early."""
    _check_size(min_size)
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three integers in 0..255, got {background!r}")


def _check_size(size: int) -> None:
    """Require a positive integer pixel size."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _list_candidates(folder: Path) -> tuple[list[Path], list[str]]:
    """Return the files to check (sorted) and notes about skipped subfolders."""
    problem = path_problem(folder, "folder")
    if problem:
        raise InputError(f"subject photo folder {folder}: {problem}")
    candidates: list[Path] = []
    notes: list[str] = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            notes.append(f"{path.name}/: subfolder ignored (photos are not searched recursively)")
        elif not _is_sidecar(path):
            candidates.append(path)
    if not candidates:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InputError(f"no image files found in {folder} (looked for {suffixes})")
    return candidates, notes


def _is_sidecar(path: Path) -> bool:
    """True for known non-image companions (captions, metadata, licence/readme files)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return False
    return suffix in SIDECAR_SUFFIXES or bool(_SIDECAR_NAME.match(path.name)) or (
        path.name.lower() in {"thumbs.db", "desktop.ini"}
    )


@contextlib.contextmanager
def _strict_pil() -> Iterator[list[warnings.WarningMessage]]:
    """Make Pillow strict (no truncated loads; bomb check at MAX_PIXELS is an error) for a while.

    Pillow checks the pixel count at ``Image.open``, before any pixel memory is allocated.
    Yields the list of other warnings Pillow emitted, to be reported per file. Not thread-safe:
    it briefly changes Pillow's module-level settings.
    """
    saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield caught
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load_one(
    path: Path, min_size: int, background: tuple[int, int, int]
) -> tuple[Image.Image, list[str]]:
    """Fully decode and normalise one file, or raise :class:`BadImage` with the reason."""
    try:
        head = _precheck(path)
        with _strict_pil() as caught, Image.open(path) as img:
            notes = _frame_notes(img)
            img.load()
            rgb = normalize(img, background, notes)
        notes.extend(f"Pillow warning: {w.message}" for w in caught)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "its pixel count"
        raise BadImage(f"{count} exceeds the {MAX_PIXELS:,}-pixel safety limit "
                        "(possible decompression bomb); downscale it first") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(_identify_failure(head)) from exc
    except OSError as exc:
        raise BadImage(f"truncated or corrupt image data ({exc})") from exc
    except Exception as exc:  # Pillow raises many types for malformed files
        raise BadImage(f"corrupt image data ({type(exc).__name__}: {exc})") from exc
    width, height = rgb.size
    if min(width, height) < min_size:
        raise BadImage(f"too small: {width}x{height} px, the shorter side must be at least {min_size} px")
    return rgb, notes


def _precheck(path: Path) -> bytes:
    """Cheap checks before decoding; returns the first 512 bytes of the file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise BadImage(f"cannot read the file ({exc.strerror or exc})") from exc
    if not head:
        raise BadImage("empty file (0 bytes)")
    if (path.suffix.lower() in HEIF_SUFFIXES or is_heif(head)) and not heif_support():
        raise BadImage(HEIF_HINT)
    return head


def _identify_failure(head: bytes) -> str:
    """Explain why Pillow could not identify a file, from its first bytes."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"corrupt or truncated {name} file (it has a {name} header but cannot be decoded)"
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return "corrupt or truncated WebP file (it has a WebP header but cannot be decoded)"
    if b"\x00" not in head:
        preview = head[:24].decode("utf-8", errors="replace").strip()
        return f"not an image: the file contains text (starts with {preview!r})"
    return "not a recognised image format (Pillow cannot identify it)"


def _frame_notes(img: Image.Image) -> list[str]:
    """Warn about animations (the first frame is used); leaves ``img`` on frame 0."""
    try:
        frames = int(getattr(img, "n_frames", 1))
    except Exception:  # a broken later frame does not matter: only frame 0 is used
        frames = 1
    img.seek(0)
    if frames > 1 and img.format != "MPO":  # MPO = camera JPEG with preview/depth frames
        return [f"animated {img.format} with {frames} frames; only the first frame is used"]
    return []


def _pixel_hash(image: Image.Image) -> str:
    """SHA-256 of the image size and RGB bytes."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _duplicate_warnings(images: list[SubjectImage]) -> list[str]:
    """One warning per photo whose pixels equal an earlier photo's."""
    first_seen: dict[str, Path] = {}
    notes: list[str] = []
    for item in images:
        original = first_seen.setdefault(item.sha256, item.path)
        if original != item.path:
            notes.append(f"{item.path.name}: identical pixels to {original.name} (duplicate photo); "
                         "it will be used twice unless you remove one copy")
    return notes
