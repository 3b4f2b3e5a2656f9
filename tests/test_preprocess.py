"""The one preprocessing path: real BUSI files, odd Pillow modes and inputs it must refuse."""

from __future__ import annotations

import builtins
import io
from pathlib import Path

import numpy as np
import pytest
from fake_images import png_header_only
from PIL import Image
from required import missing

from edge_infer import preprocess
from edge_infer.preprocess import ImageError, decode_image, preprocess_image, to_model_input
from edge_infer.spec import INPUT_SHAPE, INPUT_SIZE
from train.datasets import list_busi_images

ORIENTATION_TAG = 0x0112


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def luma_input(image: Image.Image) -> np.ndarray:
    """The documented model input, written out: 601 luma, bilinear 224x224, in 3 channels."""
    luma = image.convert("L").resize((224, 224), Image.Resampling.BILINEAR)
    return np.repeat(np.asarray(luma)[..., None], 3, axis=2)


def assert_grey_channels(out: np.ndarray) -> None:
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


# Pillow's "L" (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B, rounded), checked by hand and Pillow
LUMA = {
    (255, 255, 255): 255,
    (255, 0, 0): 76,  # 76.245
    (0, 255, 0): 150,  # 149.685
    (0, 0, 255): 29,  # 29.07
    (0, 0, 0): 0,
}


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


# --- real BUSI files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_samples(busi_root: Path) -> list[Path]:
    """The first image of each class plus the first RGB-mode file (BUSI is mostly grey)."""
    items = list_busi_images(busi_root)
    firsts: dict[str, Path] = {}
    for rel, label in items:
        firsts.setdefault(label, busi_root / rel)
    samples = list(firsts.values())
    for rel, _ in items:
        with Image.open(busi_root / rel) as image:
            if image.mode == "RGB":
                samples.append(busi_root / rel)
                break
    return samples


@pytest.fixture(scope="module")
def busi_grey(busi_root: Path) -> Path:
    for rel, _ in list_busi_images(busi_root):
        with Image.open(busi_root / rel) as image:
            if image.mode == "L":
                return busi_root / rel
    missing("no grayscale BUSI file found")


def test_busi_shape_dtype_and_determinism(busi_samples: list[Path]) -> None:
    assert len(busi_samples) >= 3
    for path in busi_samples:
        first = preprocess_image(path)
        assert first.shape == INPUT_SHAPE == (224, 224, 3)
        assert first.dtype == np.uint8
        assert first.std() > 1.0, f"{path.name} came out flat"
        np.testing.assert_array_equal(first, preprocess_image(path))


def test_busi_matches_plain_bilinear_resize(busi_samples: list[Path]) -> None:
    """No cropping, padding or rescaling of values: exactly luma + bilinear 224x224, 3 times;
    for grey files that is also exactly the old RGB + bilinear 224x224."""
    grey_files = 0
    for path in busi_samples:
        with Image.open(path) as image:
            mode = image.mode
            luma = image.convert("L").resize((224, 224), Image.Resampling.BILINEAR)
            rgb = np.asarray(image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        out = preprocess_image(path)
        np.testing.assert_array_equal(out, np.repeat(np.asarray(luma)[..., None], 3, axis=2))
        if mode == "L":
            grey_files += 1
            np.testing.assert_array_equal(out, rgb)
    assert grey_files >= 3


def test_busi_every_source_kind_gives_the_same_array(busi_samples: list[Path]) -> None:
    for path in busi_samples:
        reference = preprocess_image(str(path))
        data = path.read_bytes()
        with open(path, "rb") as handle:
            from_handle = preprocess_image(handle)
        with Image.open(path) as image:
            from_pil = preprocess_image(image)
        for other in (
            preprocess_image(path),
            preprocess_image(data),
            preprocess_image(bytearray(data)),
            preprocess_image(io.BytesIO(data)),
            from_handle,
            from_pil,
        ):
            np.testing.assert_array_equal(other, reference)


def test_busi_grayscale_gives_equal_channels(busi_grey: Path) -> None:
    with Image.open(busi_grey) as image:
        assert image.mode == "L"
        grey = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR))
    out = preprocess_image(busi_grey)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    np.testing.assert_array_equal(out[..., 0], grey)


@pytest.fixture(scope="module")
def busi_colour(busi_root: Path) -> list[Path]:
    """The BUSI files stored as RGB (16 of 780), most with a coloured overlay or tint."""
    found = []
    for rel, _ in list_busi_images(busi_root):
        with Image.open(busi_root / rel) as image:
            if image.mode == "RGB":
                found.append(busi_root / rel)
    if not found:
        missing("no RGB BUSI file found")
    return found


def test_busi_colour_files_give_grey_model_input(busi_colour: list[Path]) -> None:
    for path in busi_colour:
        with Image.open(path) as image:
            stored = pixels(image)
            expected = luma_input(image)
        assert (stored[..., 0] != stored[..., 2]).any(), f"{path.name} has no colour"
        out = preprocess_image(path)
        assert_grey_channels(out)
        np.testing.assert_array_equal(out, expected)


def tinted(grey: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """A grey scan shown in a tint: every channel is grey * tint / 255."""
    values = grey.astype(np.float64)[..., None] * np.array(colour) / 255.0
    return Image.fromarray(np.rint(values).astype(np.uint8), mode="RGB")


SEPIA, BLUISH = (255, 200, 120), (178, 213, 255)  # both luma 207.32 (to 2 decimals)


def test_tint_does_not_change_the_model_input(busi_grey: Path) -> None:
    with Image.open(busi_grey) as image:
        grey = np.asarray(image)
    sepia, bluish = tinted(grey, SEPIA), tinted(grey, BLUISH)
    colour_gap = np.abs(pixels(sepia) - pixels(bluish)).mean(axis=(0, 1))
    assert colour_gap[0] > 10 and colour_gap[2] > 10  # the two files really look different
    a, b = preprocess_image(sepia), preprocess_image(bluish)
    assert_grey_channels(a)
    assert_grey_channels(b)
    gap = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert gap.max() <= 1 and gap.mean() < 0.25  # only per-channel rounding of the tint
    # and both are the grey scan dimmed to 207.32 / 255, to within that rounding
    dimmed = preprocess_image(busi_grey).astype(np.float64) * (207.32 / 255.0)
    assert np.abs(a - dimmed).max() < 2 and np.abs(b - dimmed).max() < 2


# --- odd modes, built here ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [("uint16", ".png"), ("big-endian", ".tif"), ("int32", ".png")],
)
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path, kind: str, suffix: str) -> None:
    values = np.array([[65535, 32896, 0, 257, 128, 129]], dtype=np.uint16)
    dtype = {"uint16": np.uint16, "big-endian": ">u2", "int32": np.int32}[kind]
    source: Path | Image.Image = Image.fromarray(values.astype(dtype))
    if kind != "int32":
        source = save(source, tmp_path / f"grey16{suffix}")
        with Image.open(source) as reopened:
            assert reopened.mode in preprocess.SIXTEEN_BIT_MODES
    else:
        assert source.mode == "I"
    rgb = pixels(decode_image(source).image)
    # 65535 -> 255, 32896 = 128 * 257 -> 128, 257 -> 1, 128/257 rounds to 0, 129/257 to 1
    expected = np.array([255, 128, 0, 1, 0, 1])
    for channel in range(3):
        np.testing.assert_array_equal(rgb[0, :, channel], expected)


def test_sixteen_bit_survives_to_the_model_input(tmp_path: Path) -> None:
    grey = Image.fromarray(np.full((7, 10), 32896, dtype=np.uint16))
    out = preprocess_image(save(grey, tmp_path / "mid.png"))
    assert out.shape == INPUT_SHAPE
    assert (out == 128).all()


CMYK_QUADRANTS = [  # (CMYK ink, hand-checked RGB)
    ((0, 0, 0, 0), (255, 255, 255)),
    ((0, 255, 255, 0), (255, 0, 0)),
    ((0, 0, 0, 255), (0, 0, 0)),
    ((255, 255, 0, 0), (0, 0, 255)),
]


def cmyk_quadrants() -> Image.Image:
    image = Image.new("CMYK", (16, 16))
    for (ink, _), corner in zip(CMYK_QUADRANTS, [(0, 0), (8, 0), (0, 8), (8, 8)]):
        image.paste(ink, (*corner, corner[0] + 8, corner[1] + 8))
    return image


@pytest.mark.parametrize(("fmt", "tolerance"), [("TIFF", 0), ("JPEG", 6)])
def test_cmyk(tmp_path: Path, fmt: str, tolerance: int) -> None:
    original = cmyk_quadrants()
    path = save(original, tmp_path / f"cmyk.{fmt.lower()}", format=fmt, quality=100)
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"
    rgb = pixels(decode_image(path).image)
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb, pixels(original.convert("RGB")), atol=tolerance)
    for (_, expected), (x, y) in zip(CMYK_QUADRANTS, [(0, 0), (8, 0), (0, 8), (8, 8)]):
        block = rgb[y + 2 : y + 6, x + 2 : x + 6]
        np.testing.assert_allclose(block, np.broadcast_to(expected, block.shape), atol=tolerance)
    out = preprocess_image(path)
    assert_grey_channels(out)
    for (_, expected), (x, y) in zip(CMYK_QUADRANTS, [(0, 0), (112, 0), (0, 112), (112, 112)]):
        block = out[y + 28 : y + 84, x + 28 : x + 84, 0]  # away from the blurred edges
        np.testing.assert_allclose(block, LUMA[expected], atol=tolerance)


PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0]


@pytest.mark.parametrize(
    ("transparency", "expected"),
    [
        (None, [(10, 20, 30), (200, 100, 50), (0, 255, 0)]),
        (0, [(0, 0, 0), (200, 100, 50), (0, 255, 0)]),
    ],
)
def test_palette_png(tmp_path: Path, transparency: int | None, expected: list) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    image.putdata([0, 1, 2])
    params = {} if transparency is None else {"transparency": transparency}
    path = save(image, tmp_path / "palette.png", **params)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
        assert ("transparency" in reopened.info) == (transparency is not None)
    decoded = decode_image(path).image
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(pixels(decoded)[0], expected)


def test_rgba_composites_on_black(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 1))
    image.putdata([(255, 0, 0, 255), (255, 255, 255, 0), (200, 100, 50, 128), (12, 34, 56, 255)])
    rgb = pixels(decode_image(save(image, tmp_path / "rgba.png")).image)[0]
    np.testing.assert_array_equal(rgb[0], (255, 0, 0))  # opaque keeps its colour
    np.testing.assert_array_equal(rgb[1], (0, 0, 0))  # transparent white becomes black
    np.testing.assert_allclose(rgb[2], (100, 50, 25), atol=1)  # half alpha: half the colour
    np.testing.assert_array_equal(rgb[3], (12, 34, 56))
    blocks = image.resize((32, 8), Image.Resampling.NEAREST)  # each pixel an 8x8 block
    out = preprocess_image(save(blocks, tmp_path / "rgba_blocks.png"))
    assert_grey_channels(out)
    # luma: red 76, black 0, (100, 50, 25) -> 62.1, (12, 34, 56) -> 29.9
    for column, expected in enumerate((76, 0, 62, 30)):
        centre = out[:, column * 56 + 12 : column * 56 + 44, 0]  # away from the blurred edges
        np.testing.assert_allclose(centre, expected, atol=1)


def test_la_composites_on_black(tmp_path: Path) -> None:
    image = Image.new("LA", (3, 1))
    image.putdata([(200, 255), (200, 0), (200, 128)])
    rgb = pixels(decode_image(save(image, tmp_path / "la.png")).image)[0]
    np.testing.assert_allclose(rgb, [[200] * 3, [0] * 3, [100] * 3], atol=1)


def test_premultiplied_la_in_memory() -> None:
    """La stores grey already multiplied by alpha: on black that is the stored grey."""
    rgb = pixels(decode_image(Image.new("La", (2, 2), (100, 128))).image)
    np.testing.assert_allclose(rgb, np.full((2, 2, 3), 100), atol=1)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [("L", [0, 77, 255], [0, 77, 255]), ("1", [0, 1, 0], [0, 255, 0])],
)
def test_grey_and_bilevel(tmp_path: Path, mode: str, values: list, expected: list) -> None:
    image = Image.new(mode, (3, 1))
    image.putdata(values)
    rgb = pixels(decode_image(save(image, tmp_path / f"{mode}.png")).image)[0]
    np.testing.assert_array_equal(rgb, np.repeat(np.array(expected)[:, None], 3, axis=1))


def marked_jpeg(path: Path, orientation: int) -> Path:
    """48 wide x 24 high, black, with a red 8x8 square in the stored top-left corner."""
    image = Image.new("RGB", (48, 24))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return save(image, path, exif=exif.tobytes(), quality=95, subsampling=0)


def corner_blocks(array: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The k x k block in each corner of an image array, by name."""
    return {
        "top-left": array[:k, :k],
        "top-right": array[:k, -k:],
        "bottom-left": array[-k:, :k],
        "bottom-right": array[-k:, -k:],
    }


def red_corners(rgb: np.ndarray, k: int = 4) -> set[str]:
    red = {name: block.mean(axis=(0, 1)) for name, block in corner_blocks(rgb, k).items()}
    for colour in red.values():  # every corner is either clearly red or clearly black
        assert colour[1] < 40 and colour[2] < 40 and (colour[0] > 200 or colour[0] < 40)
    return {name for name, colour in red.items() if colour[0] > 200}


def bright_corners(luma: np.ndarray, k: int = 4) -> set[str]:
    """In the model input the red mark is grey at red's luma, 76; the rest stays black."""
    means = {name: float(block.mean()) for name, block in corner_blocks(luma, k).items()}
    for value in means.values():
        assert abs(value - LUMA[(255, 0, 0)]) <= 4 or value < 4
    return {name for name, value in means.items() if value > 40}


@pytest.mark.parametrize(
    ("orientation", "size", "corner"),
    [
        (1, (48, 24), "top-left"),
        (2, (48, 24), "top-right"),  # mirrored
        (3, (48, 24), "bottom-right"),  # 180 degrees
        (6, (24, 48), "top-right"),  # shown rotated 90 degrees clockwise
        (8, (24, 48), "bottom-left"),  # shown rotated 90 degrees counter-clockwise
    ],
)
def test_exif_orientation(tmp_path: Path, orientation: int, size: tuple, corner: str) -> None:
    path = marked_jpeg(tmp_path / f"exif{orientation}.jpg", orientation)
    with Image.open(path) as stored:
        assert stored.size == (48, 24)
        assert stored.getexif()[ORIENTATION_TAG] == orientation
    decoded = decode_image(path).image
    assert decoded.size == size
    assert red_corners(pixels(decoded)) == {corner}
    out = preprocess_image(path)
    assert_grey_channels(out)
    assert bright_corners(out[..., 0]) == {corner}


def test_animated_gif_uses_first_frame_with_a_note(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 6), value) for value in (0, 128, 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(path)
    assert (pixels(decoded.image) == 0).all()
    assert len(decoded.notes) == 1
    assert "3 frames" in decoded.notes[0] and "first frame" in decoded.notes[0]
    with Image.open(path) as image:  # a caller's image left on a later frame
        image.seek(2)
        assert (pixels(decode_image(image).image) == 0).all()


def test_multi_page_tiff_uses_first_page(tmp_path: Path) -> None:
    pages = [Image.new("L", (5, 4), value) for value in (10, 20)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    decoded = decode_image(path)
    assert (pixels(decoded.image) == 10).all()
    assert any("2 frames" in note for note in decoded.notes)


def test_single_frame_has_no_notes(tmp_path: Path) -> None:
    assert decode_image(save(Image.new("RGB", (5, 4)), tmp_path / "one.png")).notes == []


def test_to_model_input_stretches_without_cropping() -> None:
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (32, 0, 64, 32))
    out = to_model_input(image)
    assert out.shape == INPUT_SHAPE and out.dtype == np.uint8
    assert (out[:, :100] == 0).all() and (out[:, 124:] == 255).all()
    assert (out == out[:1]).all()  # every row alike: nothing cropped or padded vertically
    assert_grey_channels(out)


def test_to_model_input_is_luma_of_colours() -> None:
    colours = list(LUMA)
    image = Image.new("RGB", (8 * len(colours), 8))
    for index, colour in enumerate(colours):
        image.paste(colour, (8 * index, 0, 8 * index + 8, 8))
    out = to_model_input(image)
    assert out.shape == INPUT_SHAPE and out.dtype == np.uint8
    assert_grey_channels(out)
    np.testing.assert_array_equal(out, luma_input(image))
    width = INPUT_SIZE // len(colours)
    for index, colour in enumerate(colours):
        stripe = out[:, index * width + 8 : (index + 1) * width - 8, 0]  # away from the edges
        assert (stripe == LUMA[colour]).all(), (colour, np.unique(stripe))


def test_grey_is_unchanged_by_the_luma_step() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    grey = Image.fromarray(values, mode="L")
    np.testing.assert_array_equal(np.asarray(grey.convert("RGB").convert("L")), values)
    from_l, from_rgb = to_model_input(grey), to_model_input(grey.convert("RGB"))
    np.testing.assert_array_equal(from_l, from_rgb)
    plain = np.asarray(grey.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(from_l, plain)  # same as the old RGB path for grey input


def test_to_model_input_takes_rgb_or_l() -> None:
    for mode in ("RGB", "L"):
        out = to_model_input(Image.new(mode, (INPUT_SIZE, INPUT_SIZE)))
        assert out.shape == INPUT_SHAPE and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "LA", "P", "1", "I;16", "I", "F", "YCbCr"])
def test_to_model_input_refuses_other_modes(mode: str) -> None:
    with pytest.raises(ImageError, match=f"got mode {mode};.*decode_image"):
        to_model_input(Image.new(mode, (INPUT_SIZE, INPUT_SIZE)))


# --- files we open are closed; files and images the caller owns are not -----------------


@pytest.fixture
def opened_files(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every file Pillow opens by name during the test."""
    files: list = []
    real_open = builtins.open

    def spy(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        files.append(handle)
        return handle

    monkeypatch.setattr(Image.builtins, "open", spy)
    return files


def test_files_opened_by_path_are_closed(tmp_path: Path, opened_files: list) -> None:
    frames = [Image.new("L", (8, 6), value) for value in (0, 255)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(noise).save(data, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    opened_files.clear()

    decode_image(gif)
    with pytest.raises(ImageError):
        decode_image(truncated)
    assert len(opened_files) == 2
    assert all(handle.closed for handle in opened_files)


def test_caller_owned_file_and_image_stay_usable(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 6), value) for value in (0, 255)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    with open(gif, "rb") as handle:
        decode_image(handle)
        assert not handle.closed
    with Image.open(gif) as image:
        decode_image(image)
        image.seek(1)
        assert (pixels(image.convert("L")) == 255).all()


# --- inputs that must be refused ---------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="no such file") as info:
        decode_image(missing)
    assert str(missing) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory"):
        decode_image(tmp_path)


def test_zero_byte_file_and_empty_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for source in (empty, b""):
        with pytest.raises(ImageError, match="empty"):
            preprocess_image(source)


def test_random_bytes_and_text(tmp_path: Path) -> None:
    noise = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    text = tmp_path / "notes.png"
    text.write_text("this is a text file, not an ultrasound scan\n")
    for source in (noise, text):
        with pytest.raises(ImageError, match="not an image"):
            preprocess_image(source)


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = save(Image.fromarray(noise), tmp_path / "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    np.testing.assert_array_equal(pixels(decode_image(whole).image), noise)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(cut)


def test_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 100)
    assert decode_image(Image.new("RGB", (10, 10))).image.size == (10, 10)  # at the limit
    too_big = save(Image.new("RGB", (11, 10)), tmp_path / "big.png")
    for source in (too_big, Image.new("RGB", (11, 10))):
        with pytest.raises(ImageError, match="too large") as info:
            decode_image(source)
        assert "11x10" in str(info.value)


@pytest.mark.parametrize("side", [10_000, 50_000])  # Pillow's warning, then error, territory
def test_decompression_bomb_header(side: int) -> None:
    with pytest.raises(ImageError, match="decompression-bomb"):
        decode_image(png_header_only(side, side))


def test_no_pixels() -> None:
    with pytest.raises(ImageError, match="no pixels"):
        decode_image(Image.new("RGB", (0, 3)))


def test_floating_point_mode(tmp_path: Path) -> None:
    image = Image.new("F", (3, 3), 0.5)
    for source in (image, save(image, tmp_path / "float.tif")):
        with pytest.raises(ImageError, match="floating-point"):
            decode_image(source)
