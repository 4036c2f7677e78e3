"""Tests for subject photo loading: every bad-input kind is built on the fly with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade_booth import images
from cascade_booth.errors import InputError
from cascade_booth.images import (
    IMAGE_SUFFIXES,
    SubjectImage,
    center_crop_resize,
    load_subject_images,
    to_tensor,
)

MIN = 32
DREAMBENCH_CLOCK = Path("/work/shared/dreambench/clock")
BUNDLED_CLOCK = Path(images.__file__).parent / "data" / "clock"


def _gradient(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A small RGB image with distinct content per seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def _load_single(tmp_path: Path, **kwargs: object) -> tuple[SubjectImage, list[str]]:
    loaded, notes = load_subject_images(tmp_path, MIN, **kwargs)
    assert len(loaded) == 1
    return loaded[0], notes


def _error(folder: Path, min_size: int = MIN) -> str:
    with pytest.raises(InputError) as info:
        load_subject_images(folder, min_size)
    return str(info.value)


# --- folder-level errors ----------------------------------------------------------------


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert str(missing) in _error(missing)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = _save(_gradient(), tmp_path / "a.png")
    assert "not a folder" in _error(file)


def test_folder_without_images_ignores_sidecars(tmp_path: Path) -> None:
    (tmp_path / "captions.txt").write_text("a photo of sks clock")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "LICENSE").write_text("CC-BY")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tmp_path / "sub").mkdir()
    message = _error(tmp_path)
    assert "no image files" in message and str(tmp_path) in message


def test_sidecars_hidden_files_and_subfolders_are_skipped(tmp_path: Path) -> None:
    _save(_gradient(), tmp_path / "photo.jpg", quality=95)
    (tmp_path / "photo.txt").write_text("caption")
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "._photo.jpg").write_bytes(b"AppleDouble junk")
    (tmp_path / "extra").mkdir()
    loaded, notes = load_subject_images(tmp_path, MIN)
    assert [item.path.name for item in loaded] == ["photo.jpg"]
    assert any("extra/" in note for note in notes)


# --- per-file errors --------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    message = _error(tmp_path)
    assert "empty.jpg" in message and "0 bytes" in message


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html>not a photo</html>")
    message = _error(tmp_path)
    assert "page.jpg" in message and "text" in message


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = io.BytesIO()
    _gradient(128, 128).save(data, format="JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    message = _error(tmp_path)
    assert "cut.jpg" in message and "truncated" in message


def test_truncated_png(tmp_path: Path) -> None:
    data = io.BytesIO()
    _gradient(128, 128).save(data, format="PNG")
    (tmp_path / "cut.png").write_bytes(data.getvalue()[: len(data.getvalue()) * 2 // 3])
    message = _error(tmp_path)
    assert "cut.png" in message and ("truncated" in message or "corrupt" in message)


def test_unknown_binary_file_is_checked(tmp_path: Path) -> None:
    (tmp_path / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0\x00\x00binary")
    assert "notes.doc" in _error(tmp_path)


def test_heic_is_refused_with_hint(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    message = _error(tmp_path)
    assert "IMG_0001.HEIC" in message and "HEIC" in message and "JPEG" in message


def test_heic_renamed_to_jpg_is_detected(tmp_path: Path) -> None:
    heif_start = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    (tmp_path / "IMG_0002.jpg").write_bytes(heif_start + b"\x00" * 64)
    message = _error(tmp_path)
    assert "IMG_0002.jpg" in message and "pillow-heif" in message


def test_too_small_names_size_and_requirement(tmp_path: Path) -> None:
    _save(_gradient(40, 20), tmp_path / "tiny.png")
    message = _error(tmp_path)
    assert "tiny.png" in message and "40x20" in message and str(MIN) in message


@pytest.mark.parametrize("limit", [3000, 1000])  # PIL warning range, PIL error range
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    _save(_gradient(64, 64), tmp_path / "bomb.png")
    saved_limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(images, "MAX_PIXELS", limit)
    message = _error(tmp_path)
    assert "bomb.png" in message and "decompression bomb" in message
    assert Image.MAX_IMAGE_PIXELS == saved_limit  # global Pillow state restored


def test_one_error_names_every_bad_file(tmp_path: Path) -> None:
    _save(_gradient(), tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "photo.heic").write_bytes(b"whatever")
    _save(_gradient(16, 16), tmp_path / "small.png")
    data = io.BytesIO()
    _gradient(128, 128).save(data, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[:600])
    message = _error(tmp_path)
    for name in ("empty.jpg", "text.jpg", "photo.heic", "small.png", "cut.jpg"):
        assert name in message
    assert "good.png" not in message
    assert message.count("\n  - ") == 5


# --- normalisation ----------------------------------------------------------------------


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    _save(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), tmp_path / "red.jpg", quality=95)
    item, _ = _load_single(tmp_path)
    assert item.image.mode == "RGB"
    red, green, blue = item.image.getpixel((24, 24))
    assert red > 200 and green < 60 and blue < 60


def test_rgba_transparency_is_composited_over_background(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (48, 48), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 24, 48))
    _save(rgba, tmp_path / "cutout.png")
    item, notes = _load_single(tmp_path, background=(10, 200, 30))
    assert item.image.mode == "RGB"
    assert item.image.getpixel((40, 10)) == (10, 200, 30)
    assert item.image.getpixel((5, 10)) == (0, 0, 255)
    assert any("cutout.png" in n and "(10, 200, 30)" in n for n in notes)


def test_opaque_rgba_gives_no_transparency_warning(tmp_path: Path) -> None:
    _save(_gradient().convert("RGBA"), tmp_path / "opaque.png")
    item, notes = _load_single(tmp_path)
    assert item.image.mode == "RGB" and not notes


def test_palette_with_transparency_and_la(tmp_path: Path) -> None:
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 20, 40))
    _save(palette, tmp_path / "a_pal.png", transparency=0)
    _save(Image.new("LA", (40, 40), (90, 0)), tmp_path / "b_la.png")
    loaded, notes = load_subject_images(tmp_path, MIN)
    assert loaded[0].image.getpixel((30, 5)) == (255, 255, 255)
    assert loaded[0].image.getpixel((5, 5)) == (0, 255, 0)
    assert loaded[1].image.getpixel((5, 5)) == (255, 255, 255)
    assert len([n for n in notes if "composited" in n]) == 2


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.full((40, 40), 32768, dtype=np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode in {"I", "I;16"}
    item, _ = _load_single(tmp_path)
    assert item.image.getpixel((20, 20)) == (128, 128, 128)
    assert item.image.getpixel((0, 0)) == (255, 255, 255)


def test_one_bit_image(tmp_path: Path) -> None:
    _save(_gradient().convert("1"), tmp_path / "bw.png")
    item, _ = _load_single(tmp_path)
    assert item.image.mode == "RGB"
    assert set(np.unique(np.asarray(item.image))) <= {0, 255}


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 40, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half ends up on top
    _save(stored, tmp_path / "rotated.jpg", exif=exif, quality=95)
    item, _ = _load_single(tmp_path)
    assert item.image.size == (40, 80)
    top, bottom = item.image.getpixel((20, 10)), item.image.getpixel((20, 70))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_uses_first_frame_with_warning(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    item, notes = _load_single(tmp_path)
    assert item.image.getpixel((20, 20)) == (255, 0, 0)
    assert any("anim.gif" in n and "3 frames" in n for n in notes)


def test_animated_png_uses_first_frame_with_warning(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 40), (0, 0, 255)), Image.new("RGB", (40, 40), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    item, notes = _load_single(tmp_path)
    assert item.image.getpixel((20, 20)) == (0, 0, 255)
    assert any("anim.png" in n and "first frame" in n for n in notes)


def test_duplicates_warn_naming_both(tmp_path: Path) -> None:
    _save(_gradient(seed=1), tmp_path / "a.png")
    _save(_gradient(seed=1), tmp_path / "b.png")
    _save(_gradient(seed=2), tmp_path / "c.png")
    loaded, notes = load_subject_images(tmp_path, MIN)
    assert loaded[0].sha256 == loaded[1].sha256 != loaded[2].sha256
    duplicates = [n for n in notes if "duplicate" in n]
    assert len(duplicates) == 1 and "a.png" in duplicates[0] and "b.png" in duplicates[0]


def test_results_are_sorted_and_detached(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "c.webp"):
        _save(_gradient(seed=len(name) + ord(name[0])), tmp_path / name)
    loaded, _ = load_subject_images(tmp_path, MIN)
    assert [item.path.name for item in loaded] == ["a.png", "b.jpg", "c.webp"]
    for item in loaded:
        item.path.unlink()
        assert item.image.mode == "RGB" and item.image.tobytes()  # no lazy file access


def test_bad_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_subject_images(tmp_path, 0)
    with pytest.raises(ValueError):
        load_subject_images(tmp_path, MIN, background=(0, 0, 300))


def test_image_suffixes_constant() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp"} <= IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)


# --- tensors ----------------------------------------------------------------------------


def test_center_crop_resize_takes_the_centre() -> None:
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 255, 0), (100, 0, 200, 100))
    square = center_crop_resize(wide, 50)
    assert square.size == (50, 50)
    assert square.getpixel((25, 25)) == (0, 255, 0)
    assert square.getpixel((1, 25))[1] > 240  # red sides were cropped away


def test_to_tensor_shape_range_and_values() -> None:
    tensor = to_tensor(Image.new("RGB", (90, 60), (0, 255, 128)), 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert torch.allclose(tensor[:, 16, 16], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1.0]), atol=1e-6)


def test_to_tensor_antialiases_when_downscaling() -> None:
    stripes = np.zeros((256, 256, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    tensor = to_tensor(Image.fromarray(stripes), 16)
    assert tensor.abs().max() < 0.2  # averages to grey instead of aliasing to black/white


def test_to_tensor_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        to_tensor(Image.new("RGB", (8, 8)), 0)


@pytest.mark.parametrize("folder", [DREAMBENCH_CLOCK, BUNDLED_CLOCK], ids=["dreambench", "bundled"])
def test_real_clock_photos(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    loaded, notes = load_subject_images(folder, 256)
    assert len(loaded) >= 4
    assert not [n for n in notes if "duplicate" in n]
    for item in loaded:
        assert item.image.mode == "RGB" and min(item.image.size) >= 256
    tensor = to_tensor(loaded[0].image, 64)
    assert tensor.shape == (3, 64, 64) and -1.0 <= tensor.min() < tensor.max() <= 1.0
