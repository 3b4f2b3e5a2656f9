"""Images that are not breast ultrasound, for evaluating the out-of-distribution check.

Three groups, every image an 8-bit RGB PIL image with a stable name:
- "package": the photographs and test images scikit-image (`skimage.data`, those shipped in its
  wheel) and scikit-learn (`load_sample_images`) install, each whole and, when at least
  `CROP_MIN_SIDE` pixels on both sides, as four quadrant crops;
- "synthetic": noise, flat grey, gradients, checkerboards, text and shapes drawn with Pillow
  (seeded, so every run draws the same images);
- "corrupted": BUSI images damaged beyond use (noise, blur, negative, jigsaw, near-black); they
  ARE ultrasound underneath, so the report counts them apart from the two groups above.

scikit-image is an evaluation-only dependency (the [bench] and [dev] extras).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

SIZE = 256
CROP_MIN_SIDE = 300
SEED = 0
# skimage.data images inside the scikit-image wheel (the others are downloaded on first use).
SKIMAGE_IMAGES: tuple[str, ...] = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "clock",
    "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
)
SKIMAGE_ARGS: dict[str, dict] = {"binary_blobs": {"rng": SEED}}  # random unless seeded
LFW_FACES = 10  # the first faces of skimage.data.lfw_subset (25x25 grey)
OOD_GROUPS: tuple[str, ...] = ("package", "synthetic")
CORRUPTED_GROUP = "corrupted"
CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "negative", "jigsaw", "dark")


@dataclass(frozen=True)
class NamedImage:
    """One evaluation image: name (e.g. 'skimage/astronaut/crop2'), group and RGB pixels."""

    name: str
    group: str
    image: Image.Image


def _rgb(array: np.ndarray) -> Image.Image:
    """Any skimage array (bool, float 0..1, uint8; grey, RGB or RGBA) -> 8-bit RGB image."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        return Image.fromarray(array, "RGBA").convert("RGB")
    return Image.fromarray(array).convert("RGB")


def _with_crops(name: str, image: Image.Image) -> Iterable[NamedImage]:
    yield NamedImage(name, "package", image)
    width, height = image.size
    if min(width, height) < CROP_MIN_SIDE:
        return
    half_w, half_h = width // 2, height // 2
    for index, (left, top) in enumerate(((0, 0), (half_w, 0), (0, half_h), (half_w, half_h))):
        yield NamedImage(f"{name}/crop{index}", "package",
                         image.crop((left, top, left + half_w, top + half_h)))


def package_images() -> list[NamedImage]:
    """scikit-image's and scikit-learn's shipped images, whole and as quadrant crops."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    found: list[NamedImage] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in SKIMAGE_IMAGES:
            found += _with_crops(f"skimage/{name}",
                                 _rgb(getattr(skimage.data, name)(**SKIMAGE_ARGS.get(name, {}))))
        for index, face in enumerate(skimage.data.lfw_subset()[:LFW_FACES]):
            found.append(NamedImage(f"skimage/lfw_subset/{index}", "package", _rgb(face)))
        sample = load_sample_images()
        for file, array in zip(sample.filenames, sample.images):
            found += _with_crops(f"sklearn/{Path(file).stem}", _rgb(array))
    return found


def _grey(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L").convert("RGB")


def _noise_images(rng: np.random.Generator) -> Iterable[tuple[str, Image.Image]]:
    shape = (SIZE, SIZE)
    for index in range(3):
        yield f"noise-gaussian-{index}", _grey(rng.normal(128, 50, shape))
        yield f"noise-uniform-{index}", _grey(rng.uniform(0, 255, shape))
        yield f"noise-colour-{index}", Image.fromarray(
            rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")
        # speckle-like: Rayleigh noise, the texture of ultrasound without any anatomy
        yield f"noise-rayleigh-{index}", _grey(rng.rayleigh(40, shape))
        yield f"noise-blobs-{index}", _grey(
            np.asarray(_grey(rng.normal(128, 90, shape)).filter(ImageFilter.GaussianBlur(6)))
            [..., 0].astype(float))


def _flat_and_gradient_images() -> Iterable[tuple[str, Image.Image]]:
    for level in (0, 64, 128, 192, 255):
        yield f"flat-grey-{level}", _grey(np.full((SIZE, SIZE), level, float))
    for rgb in ((200, 30, 30), (30, 160, 60), (40, 60, 200)):
        yield f"flat-colour-{'-'.join(map(str, rgb))}", Image.new("RGB", (SIZE, SIZE), rgb)
    ramp = np.linspace(0, 255, SIZE)
    yield "gradient-horizontal", _grey(np.tile(ramp, (SIZE, 1)))
    yield "gradient-vertical", _grey(np.tile(ramp[:, None], (1, SIZE)))
    yield "gradient-diagonal", _grey((ramp[None, :] + ramp[:, None]) / 2)
    y, x = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j]
    yield "gradient-radial", _grey(255 * np.clip(1 - np.hypot(x, y), 0, 1))
    yield "gradient-colour", Image.fromarray(np.stack(
        [np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)),
         np.full((SIZE, SIZE), 128.0)], axis=2).astype(np.uint8), "RGB")


def _checkerboards() -> Iterable[tuple[str, Image.Image]]:
    for cells in (2, 4, 8, 16, 32):
        index = (np.arange(SIZE) * cells // SIZE)
        board = (index[:, None] + index[None, :]) % 2
        yield f"checkerboard-{cells}", _grey(board * 255.0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


TEXT_LINES = ("Patient report", "Lorem ipsum dolor sit amet,", "consectetur adipiscing elit",
              "2024-05-17 10:42", "ID 0042 / side L", "Impression: see note")


def _text_images() -> Iterable[tuple[str, Image.Image]]:
    for size, (ink, paper) in ((14, (0, 255)), (20, (255, 0)), (28, (40, 220)),
                               (18, ((20, 20, 160), (250, 250, 240)))):
        ink_rgb = ink if isinstance(ink, tuple) else (ink,) * 3
        paper_rgb = paper if isinstance(paper, tuple) else (paper,) * 3
        image = Image.new("RGB", (SIZE, SIZE), paper_rgb)
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(TEXT_LINES * 3):
            draw.text((8, 6 + row * (size + 4)), line, fill=ink_rgb, font=_font(size))
        yield f"text-{size}px", image


def _screenshot(rng: np.random.Generator) -> Iterable[tuple[str, Image.Image]]:
    """Window-like layouts: title bar, buttons, panels; and random shapes."""
    for index in range(3):
        image = Image.new("RGB", (SIZE, SIZE), (236, 236, 236))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, SIZE, 24), fill=(50, 90, 160))
        draw.text((8, 5), f"Viewer {index}", fill=(255, 255, 255), font=_font(14))
        for _ in range(8):
            x, y = rng.integers(0, SIZE - 60, 2)
            w, h = rng.integers(20, 60, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle((int(x), int(y) + 30, int(x + w), int(y + h) + 30), fill=colour,
                           outline=(0, 0, 0))
        yield f"screenshot-{index}", image
    for index in range(3):
        image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            (x0, x1), (y0, y1) = sorted(rng.integers(0, SIZE, 2)), sorted(rng.integers(0, SIZE, 2))
            grey = int(rng.integers(40, 256))
            draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=(grey,) * 3)
        yield f"shapes-grey-{index}", image


def synthetic_images(seed: int = SEED) -> list[NamedImage]:
    """Noise, flat, gradient, checkerboard, text and screenshot-like images (seeded)."""
    rng = np.random.default_rng(seed)
    made = [*_noise_images(rng), *_flat_and_gradient_images(), *_checkerboards(),
            *_text_images(), *_screenshot(rng)]
    return [NamedImage(f"synthetic/{name}", "synthetic", image) for name, image in made]


def corrupt(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One heavy corruption of an RGB image: noise (sigma 100), blur (radius 12), negative,
    jigsaw (8x8 tiles shuffled) or dark (intensities / 12)."""
    if kind == "noise":
        pixels = np.asarray(image, float) + rng.normal(0, 100, (image.height, image.width, 1))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(12))
    if kind == "negative":
        return ImageOps.invert(image)
    if kind == "dark":
        return Image.fromarray((np.asarray(image) // 12).astype(np.uint8), "RGB")
    if kind == "jigsaw":
        tiles = 8
        pixels = np.asarray(image.resize((SIZE, SIZE)))
        step = SIZE // tiles
        blocks = [pixels[r:r + step, c:c + step] for r in range(0, SIZE, step)
                  for c in range(0, SIZE, step)]
        order = rng.permutation(len(blocks))
        rows = [np.concatenate([blocks[i] for i in order[r * tiles:(r + 1) * tiles]], axis=1)
                for r in range(tiles)]
        return Image.fromarray(np.concatenate(rows, axis=0), "RGB")
    raise ValueError(f"unknown corruption {kind!r}; choose from {CORRUPTIONS}")


def corrupted_images(files: list[Path], seed: int = SEED) -> Iterator[NamedImage]:
    """Each BUSI file under every corruption (decoded by the shared decoder first), made one
    at a time."""
    from edge_infer.preprocess import decode_image

    rng = np.random.default_rng(seed)
    for path in files:
        image = decode_image(path).image
        for kind in CORRUPTIONS:
            yield NamedImage(f"busi/{Path(path).stem}/{kind}", CORRUPTED_GROUP,
                             corrupt(image, kind, rng))


def ood_images() -> list[NamedImage]:
    """The out-of-distribution set proper: package and synthetic images."""
    return package_images() + synthetic_images()
