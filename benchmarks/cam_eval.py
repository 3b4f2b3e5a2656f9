"""Heat-maps against the BUSI lesion masks (issue 8): does the class activation map point at
the lesion?

On the benign + malignant TEST images of the split manifest, for the int8 TFLite model (the
runtime's own code path, edge_infer.cam) and for the Keras model (its feature map and Dense
weights through the same functions):

\b
- pointing game: the share of images whose map maximum (at the image's own size)
  falls inside the lesion mask (the union of the image's `*_mask*.png` files);
- energy inside the mask: the share of the normalised map's sum inside the mask;

beside trivial baselines that look at no pixel: the image centre as the pointed location, a
centred Gaussian (sigma = a quarter of the width / height) as the map, and a uniform map (its
energy share is the mask's area share). Also the int8-vs-Keras agreement of the raw 7x7 maps
(Pearson correlation, same peak cell). The masks are used for this evaluation only.

`python -m busi cam-eval` prints the figures and writes them (cam.md, cam.json) with the
example overlays (cam_examples.png); the full benchmark (`python -m busi bench`) puts the same
section in its report.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from edge_infer.cam import (
    CamHead,
    class_activation_map,
    heat_at_image_size,
    normalise,
    overlay,
    upsample,
)
from edge_infer.classifier import Classifier
from edge_infer.decision import argmax_indices
from edge_infer.preprocess import decode_image, to_model_input
from edge_infer.rates import bootstrap_interval
from edge_infer.spec import CLASS_NAMES
from edge_infer.tflite_model import TFLiteModel
from train.masks import lesion_mask, mask_files

LESION_CLASSES: tuple[str, ...] = ("benign", "malignant")
GAUSSIAN_SIGMA_FRACTION = 0.25
EXAMPLES_PER_CLASS = 2  # the first hit and the first miss of int8, per lesion class
EXAMPLES_NAME = "cam_examples.png"


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum (first one, row-major) lies inside the mask."""
    return bool(mask.flat[int(np.argmax(heat))])


def energy_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's sum inside the mask (NaN for an all-zero map)."""
    total = float(heat.sum())
    return float(heat[mask].sum()) / total if total > 0 else float("nan")


def centre_pixel(size: tuple[int, int]) -> tuple[int, int]:
    """(row, column) of the image centre for size = (width, height)."""
    return size[1] // 2, size[0] // 2


def centred_gaussian(size: tuple[int, int]) -> np.ndarray:
    """A Gaussian peaking at the centre pixel, sigma a quarter of each side: (height, width)."""
    (row, column), (width, height) = centre_pixel(size), size
    y = (np.arange(height) - row) / (GAUSSIAN_SIGMA_FRACTION * height)
    x = (np.arange(width) - column) / (GAUSSIAN_SIGMA_FRACTION * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (NaN if either is constant)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else float("nan")


def keras_outputs(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, CamHead]:
    """Keras probabilities (N, 3), feature maps (N, h, w, C) and Dense head."""
    from convert.feature_output import head_weights, with_feature_map

    probs, features = with_feature_map(model).predict(images.astype(np.float32), batch_size=16,
                                                      verbose=0)
    kernel, bias = head_weights(model)
    return probs, features, CamHead(kernel, bias)


def _score(heat: np.ndarray, mask: np.ndarray) -> dict:
    return {"hit": pointing_hit(heat, mask), "energy": energy_inside(heat, mask)}


def per_image_scores(files: list[Path], labels: list[str], classifier: Classifier,
                     keras_model) -> list[dict]:
    """Every map and baseline scored on every image (the rows the summary is made of)."""
    decoded = [decode_image(file).image for file in tqdm(files, desc="cam decode", leave=False)]
    inputs = np.stack([to_model_input(image) for image in decoded])
    keras_probs, keras_features, keras_head = keras_outputs(keras_model, inputs)
    keras_predicted = argmax_indices(keras_probs)
    model = TFLiteModel(classifier.entry.path)
    rows = []
    for i, (file, label, image) in enumerate(tqdm(list(zip(files, labels, decoded)),
                                                  desc="cam maps", leave=False)):
        mask = lesion_mask(file, image.size)
        output = model.run(inputs[i])
        maps = {"int8": (output.feature_map, classifier.cam_head,
                         int(argmax_indices(output.probs[np.newaxis])[0])),
                "keras": (keras_features[i], keras_head, int(keras_predicted[i]))}
        true_index = CLASS_NAMES.index(label)
        row = {"file": file, "label": label, "mask_area": float(mask.mean()),
               "predicted": {name: CLASS_NAMES[m[2]] for name, m in maps.items()}}
        for name, (features, head, predicted) in maps.items():
            for shown, index in (("predicted", predicted), ("true", true_index)):
                heat = heat_at_image_size(features, head, index, image.size)
                row[f"{name} {shown}"] = _score(heat, mask)
        row["centre"] = {"hit": bool(mask[centre_pixel(image.size)]), "energy": float("nan")}
        row["gaussian"] = _score(centred_gaussian(image.size), mask)
        row["uniform"] = {"hit": float("nan"), "energy": float(mask.mean())}
        int8_cam = class_activation_map(output.feature_map, classifier.cam_head.kernel,
                                        true_index)
        keras_cam = class_activation_map(keras_features[i], keras_head.kernel, true_index)
        row["correlation"] = pearson(int8_cam, keras_cam)
        row["same_peak"] = bool(int8_cam.argmax() == keras_cam.argmax())
        row["int8_cam_shown"] = class_activation_map(
            output.feature_map, classifier.cam_head.kernel, maps["int8"][2]).tolist()
        rows.append(row)
    return rows


MAP_ROWS: dict[str, str] = {
    "int8 predicted": "int8 TFLite, map of the predicted class (what edge-infer shows)",
    "keras predicted": "Keras, map of the predicted class",
    "int8 true": "int8 TFLite, map of the true class",
    "keras true": "Keras, map of the true class",
    "centre": "baseline: image centre (no map; energy undefined)",
    "gaussian": "baseline: centred Gaussian, sigma = 1/4 side",
    "uniform": "baseline: uniform map (energy = mask area share; no maximum)",
}


def _mean_interval(values: np.ndarray, resamples: int) -> dict:
    """Mean and 95 % bootstrap interval of per-image values (NaN if undefined)."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return {"mean": float("nan"), "interval_95": [float("nan"), float("nan")]}
    low, high = bootstrap_interval(lambda idx: float(np.nanmean(values[idx])), len(values),
                                   resamples)
    return {"mean": float(np.nanmean(values)), "interval_95": [low, high]}


def summarise(rows: list[dict], resamples: int) -> dict:
    """Pointing game and energy per map (all images and per class), and int8-vs-Keras
    agreement of the maps."""
    labels = np.array([row["label"] for row in rows])
    summary: dict = {}
    for key, description in MAP_ROWS.items():
        hits = np.array([row[key]["hit"] for row in rows], dtype=np.float64)
        energy = np.array([row[key]["energy"] for row in rows], dtype=np.float64)
        summary[key] = {
            "description": description,
            "pointing": _mean_interval(hits, resamples),
            "energy": _mean_interval(energy, resamples),
            "pointing_by_class": {c: float(np.mean(hits[labels == c]))
                                  if (labels == c).any() and not np.isnan(hits).all()
                                  else float("nan") for c in LESION_CLASSES},
        }
    correlation = np.array([row["correlation"] for row in rows], dtype=np.float64)

    def paired(key: str, baseline: str, figure: str) -> dict:
        """int8's per-image advantage over a baseline, bootstrapped in pairs."""
        return _mean_interval(np.array([float(row[key][figure]) - float(row[baseline][figure])
                                        for row in rows]), resamples)

    return {
        "maps": summary,
        "int8_minus_baseline": {
            "pointing_vs_centre": paired("int8 predicted", "centre", "hit"),
            "energy_vs_gaussian": paired("int8 predicted", "gaussian", "energy"),
        },
        "int8_vs_keras": {
            "pearson_mean": float(np.nanmean(correlation)),
            "pearson_median": float(np.nanmedian(correlation)),
            "pearson_min": float(np.nanmin(correlation)),
            "same_peak_cell": float(np.mean([row["same_peak"] for row in rows])),
            "class": "the true class's raw 7x7 map",
        },
    }


def choose_examples(rows: list[dict], root: Path) -> list[dict]:
    """Per lesion class, the first image int8's shown map hits and the first it misses."""
    chosen = []
    for label in LESION_CLASSES:
        for hit in (True, False):
            row = next((r for r in rows if r["label"] == label
                        and r["int8 predicted"]["hit"] == hit), None)
            if row is not None:
                chosen.append({"file": Path(row["file"]).relative_to(root).as_posix(),
                               "label": label, "shown": row["predicted"]["int8"],
                               "hit": hit, "cam": row["int8_cam_shown"]})
    return chosen[:2 * EXAMPLES_PER_CLASS]


def cam_results(files: list[Path], labels: list[str], root: Path, classifier: Classifier,
                keras_model, resamples: int) -> dict:
    """The heat-map section of the benchmark: the lesion (benign / malignant) images among
    `files`, scored and summarised, with the examples to draw."""
    if not classifier.has_heatmap:
        return {"skipped": f"{classifier.entry.key} has no feature-map output or head"}
    lesions = [(Path(f), label) for f, label in zip(files, labels) if label in LESION_CLASSES]
    rows = per_image_scores([f for f, _ in lesions], [label for _, label in lesions],
                            classifier, keras_model)
    return {
        "model": classifier.entry.key,
        "images": len(rows),
        "class_counts": {c: sum(row["label"] == c for row in rows) for c in LESION_CLASSES},
        "mean_mask_area": float(np.mean([row["mask_area"] for row in rows])),
        "images_with_several_masks": sum(len(mask_files(f)) > 1 for f, _ in lesions),
        **summarise(rows, resamples),
        "examples": choose_examples(rows, root),
        "method": ("CAM_c = sum_k W[k,c] F_k (edge_infer.cam), min-max normalised, bilinear "
                   "to the decoded image's size; masks: union of *_mask*.png; 95 % intervals: "
                   f"percentile bootstrap over images ({resamples} resamples, seed 0)"),
    }


def benchmark_cam(arch: str, manifest_file: Path, root: Path, files: list[str],
                  labels: np.ndarray, keras_model, threads: int, resamples: int) -> dict:
    """The benchmark's heat-map section for an architecture's int8 model (skipped, with the
    reason, when it has none)."""
    try:
        classifier = Classifier(f"{arch}/int8", threads=threads, manifest_file=manifest_file)
    except ValueError as err:  # ModelError: not in the manifest, or refused
        return {"skipped": str(err)}
    return cam_results([Path(f) for f in files], [CLASS_NAMES[i] for i in labels], root,
                       classifier, keras_model, resamples)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (mask minus its 5x5 erosion)."""
    eroded = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(5))
    return mask & (np.asarray(eroded) == 0)


def plot_cam_examples(results: dict, path: Path) -> None:
    """The chosen examples of results["cam"]: int8 overlay with the lesion outline in white,
    one panel each (a note instead when the section was not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section, root = results["cam"], Path(results["data"]["busi_dir"])
    examples = section.get("examples", [])
    if not examples:
        figure = plt.figure(figsize=(6, 1.5))
        figure.text(0.5, 0.5, f"Heat-maps not measured: {section.get('skipped', 'no images')}",
                    ha="center", va="center", wrap=True)
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return
    figure, axes = plt.subplots(1, len(examples), figsize=(3.6 * len(examples), 4.2),
                                squeeze=False)
    for ax, example in zip(axes[0], examples):
        image = decode_image(root / example["file"]).image
        heat = np.asarray(example["cam"], dtype=np.float32)
        shown = np.asarray(overlay(image, upsample(normalise(heat), image.size))).copy()
        shown[_outline(lesion_mask(root / example["file"], image.size))] = 255
        ax.imshow(shown)
        ax.set_title(f"{Path(example['file']).name}\nmap of {example['shown']}: "
                     f"{'hit' if example['hit'] else 'miss'}", fontsize=9)
        ax.axis("off")
    figure.suptitle("int8 heat-maps (white: BUSI lesion mask)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@click.command(help=__doc__)
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "reports", show_default=True,
              help="Folder for cam.md, cam.json and cam_examples.png.")
@click.option("--resamples", type=click.IntRange(10), default=1000, show_default=True)
def main(busi_dir: str | None, out: Path, resamples: int) -> None:
    import keras

    from benchmarks.cam_markdown import cam_section
    from edge_infer.evaluation import json_ready
    from edge_infer.manifest import resolve_model
    from edge_infer.splits import split_files
    from train.datasets import resolve_busi_dir

    root = resolve_busi_dir(busi_dir)
    classifier = Classifier("int8", threads=2)
    keras_model = keras.models.load_model(
        resolve_model(f"{classifier.entry.info['arch']}/keras").path)
    rows = split_files("test")
    section = cam_results([root / r.file for r in rows], [r.label for r in rows], root,
                          classifier, keras_model, resamples)
    out.mkdir(parents=True, exist_ok=True)
    plot_cam_examples({"cam": section, "data": {"busi_dir": str(root)}}, out / EXAMPLES_NAME)
    text = "\n".join(cam_section({"cam": section, "plots": {"cam_examples": EXAMPLES_NAME}}))
    (out / "cam.md").write_text(f"{text}\n\nCommand: `python -m busi cam-eval`.\n")
    (out / "cam.json").write_text(json.dumps(json_ready(section), indent=1, allow_nan=False)
                                  + "\n")
    click.echo(text)
    click.echo(f"wrote {out / 'cam.md'}, {out / 'cam.json'} and {out / EXAMPLES_NAME}", err=True)


if __name__ == "__main__":
    main()
