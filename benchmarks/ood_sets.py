"""Images that are not breast ultrasound, for evaluating the out-of-distribution check.

Five groups, every image an 8-bit RGB PIL image with a stable name:
- "package": the photographs and test images scikit-image (`skimage.data`, those shipped in its
  wheel) and scikit-learn (`load_sample_images`) install, each whole and, when at least
  `CROP_MIN_SIDE` pixels on both sides, as four quadrant crops;
- "synthetic": noise, flat grey, gradients, checkerboards, text and shapes drawn with Pillow
  (seeded, so every run draws the same images);
- "medical": images of other modalities, the hard case: the CT, MR and colour-ultrasound test
  files pydicom ships in its wheel (pydicom/data/test_files, uncompressed ones: CT_small.dcm,
  MR_small.dcm, examples_overlay.dcm = abdominal MR, examples_rgb_color.dcm = colour ultrasound
  of another organ), matplotlib's sample MR slice (mpl-data/sample_data/s1045.ima.gz, 256 x 256
  uint16), and CT-like slices reconstructed by filtered back-projection from the Shepp-Logan
  phantom's sinogram (scikit-image), each under two display windows, flipped, and as quadrant
  crops when large;
- "doppler": colour Doppler-dominated frames made on real BUSI test scans: a colour box of
  red/blue flow blobs and a colour bar over the grey scan (seeded);
- "corrupted": BUSI images damaged beyond use (noise, blur, negative, jigsaw, near-black); they
  ARE ultrasound underneath, so the report counts them apart from the two groups above.

scikit-image and pydicom are evaluation-only dependencies (the [bench] and [dev] extras).
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
OOD_GROUPS: tuple[str, ...] = ("package", "synthetic", "medical", "doppler")
PYDICOM_FILES: tuple[str, ...] = ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm",
                                  "examples_rgb_color.dcm")
DOPPLER_SCANS = 12  # BUSI test scans given a colour Doppler overlay
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


def _windowed(array: np.ndarray, low_pct: float, high_pct: float) -> Image.Image:
    """A grey medical array shown between two percentiles of its values (a display window)."""
    values = np.asarray(array, dtype=np.float64)
    low, high = np.percentile(values, [low_pct, high_pct])
    scaled = (values - low) / max(high - low, 1e-9) * 255.0
    return _grey(np.clip(scaled, 0, 255))


def _medical_arrays() -> Iterable[tuple[str, np.ndarray]]:
    """(name, pixel array) of every medical source: pydicom's, matplotlib's, the phantom's."""
    import gzip

    import matplotlib
    import pydicom
    from pydicom.data import get_testdata_file
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file in PYDICOM_FILES:
            yield f"pydicom/{Path(file).stem}", pydicom.dcmread(get_testdata_file(file)).pixel_array
    sample = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    with gzip.open(sample) as handle:
        yield "matplotlib/s1045-mr", np.frombuffer(handle.read(), np.uint16).reshape(256, 256)
    phantom = shepp_logan_phantom()
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    sinogram = radon(phantom, theta=angles)
    yield "skimage/phantom-sinogram", sinogram
    rng = np.random.default_rng(SEED)
    for noise in (0.0, 2.0):
        noisy = sinogram + rng.normal(0.0, noise, sinogram.shape)
        yield f"skimage/phantom-fbp-noise{noise:g}", iradon(noisy, theta=angles)


def medical_images() -> list[NamedImage]:
    """Other modalities (CT, MR, colour ultrasound of another organ, CT reconstructions),
    under two display windows, mirrored, and as quadrant crops when large."""
    found = []
    for name, array in _medical_arrays():
        views = ({"": Image.fromarray(array).convert("RGB")} if array.ndim == 3 else
                 {"/window-full": _windowed(array, 0, 100),
                  "/window-narrow": _windowed(array, 20, 80)})
        for view, image in views.items():
            for named in _with_crops(f"{name}{view}", image):
                found.append(NamedImage(named.name, "medical", named.image))
            found.append(NamedImage(f"{name}{view}/mirrored", "medical",
                                    ImageOps.mirror(image)))
    return found


def doppler_overlay(scan: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A colour Doppler-dominated frame: over a box of about half the scan, red and blue flow
    blobs (smoothed noise), and a red-to-blue colour bar at the right edge."""
    width, height = scan.size
    pixels = np.asarray(scan.convert("RGB"), dtype=np.float64).copy()
    top, left = int(height * rng.uniform(0.1, 0.3)), int(width * rng.uniform(0.1, 0.3))
    box_h, box_w = int(height * 0.6), int(width * 0.6)
    field = np.asarray(_grey(rng.normal(128, 90, (box_h, box_w))).filter(
        ImageFilter.GaussianBlur(max(2, box_w // 40))))[..., 0].astype(np.float64)
    field = (field - field.mean()) / max(field.std(), 1e-9)  # flow speed, in units of spread
    flow = np.abs(field) > 0.5
    speed = np.clip(np.abs(field), 0, 3) * 20
    red = np.stack([195 + speed, 20 + speed, np.full_like(field, 20)], axis=2)
    blue = np.stack([np.full_like(field, 20), 40 + speed, 195 + speed], axis=2)
    colour = np.where((field > 0)[..., None], red, blue)
    region = pixels[top:top + box_h, left:left + box_w]
    region[flow] = colour[flow]
    bar = np.linspace(0, 1, height)[:, None]
    pixels[:, -max(4, width // 30):] = np.stack([255 * (1 - bar), 40 + 0 * bar, 255 * bar],
                                               axis=2)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def doppler_images(files: list[Path], seed: int = SEED) -> list[NamedImage]:
    """The first DOPPLER_SCANS of these BUSI files, each with a colour Doppler overlay."""
    from edge_infer.preprocess import decode_image

    rng = np.random.default_rng(seed)
    return [NamedImage(f"doppler/{Path(path).stem}", "doppler",
                       doppler_overlay(decode_image(path).image, rng))
            for path in files[:DOPPLER_SCANS]]


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


def ood_images(busi_files: list[Path]) -> list[NamedImage]:
    """The out-of-distribution set proper: package, synthetic, medical and Doppler images (the
    Doppler ones drawn over these BUSI files)."""
    return package_images() + synthetic_images() + medical_images() + doppler_images(busi_files)
