"""The seed's transfer-learning recipe: train the head, then fine-tune the backbone.

Pretrained backbones keep BatchNorm frozen in inference mode (BUSI's small batches would ruin
ImageNet statistics); a backbone trained from scratch trains its BatchNorms normally.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np

from edge_infer.calibration import choose_threshold
from edge_infer.metrics import classification_metrics, lesion_metrics
from edge_infer.spec import CLASS_NAMES, INPUT_SIZE, MALIGNANT_INDEX, preprocessing_id
from edge_infer.splits import SplitRow, load_images
from train.architectures import (
    ARCHITECTURES,
    classifier,
    efficientnet_lite0_backbone,
    efficientnetb0_backbone,
)
from train.callbacks import BestWeights, lower_loss
from train.data import dataset
from train.masks import model_input_masks
from train.pretrained import (
    LITE0_WEIGHTS_FILE,
    WeightsError,
    load_into_backbone,
    make_b0_se_pass_through,
    match_b0_input_scaling_to_lite0,
    read_lite0_tensors,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved beside the model."""

    arch: str = "efficientnet-lite0"
    weights: str = "imagenet"
    head_epochs: int = 5
    finetune_epochs: int = 30
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    batch_size: int = 16
    dropout: float = 0.3
    patience: int = 8
    class_weight_power: float = 0.5
    unfreeze_from: str | None = "block4a"
    seed: int = 0
    fold: int | None = None
    limit: int | None = None
    bus_bra: bool = False
    busi_train: bool = True
    site_levers: bool = False
    mask_loss_weight: float = 0.0
    ema_decay: float = 0.0
    selection: str = "val_loss"
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    image_size: int = INPUT_SIZE


SELECTIONS: tuple[str, ...] = ("val_loss", "sites")


@dataclass(frozen=True)
class Site:
    """A second site's split rows and image folder (BUS-BRA: benign and malignant only)."""

    name: str
    rows: list[SplitRow]
    root: Path


def _lite0_weights_path(weights: str) -> Path:
    if weights == "imagenet":
        return PROJECT_ROOT / LITE0_WEIGHTS_FILE
    return Path(weights)


def build_backbone(config: TrainConfig) -> tuple[keras.Model, str]:
    """The backbone with its initial weights, and a one-line description of them."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; choose from {ARCHITECTURES}")
    if config.arch == "efficientnet-lite0":
        backbone = efficientnet_lite0_backbone(config.image_size)
        if config.weights == "none":
            return backbone, "random"
        path = _lite0_weights_path(config.weights)
        load_into_backbone(backbone, read_lite0_tensors(path))
        return backbone, f"ImageNet EfficientNet-Lite0 ({path.name})"
    if config.weights == "imagenet":
        try:
            return (efficientnetb0_backbone("imagenet", config.image_size),
                    "ImageNet EfficientNetB0 (Keras download)")
        except Exception as err:
            raise WeightsError(
                f"could not get Keras's ImageNet EfficientNetB0 weights ({err}); "
                "offline, pass --weights PATH or --weights none"
            ) from None
    backbone = efficientnetb0_backbone(None, config.image_size)
    match_b0_input_scaling_to_lite0(backbone)
    if config.weights == "none":
        return backbone, "random"
    path = Path(config.weights)
    if path.suffix == ".npz":
        load_into_backbone(backbone, read_lite0_tensors(path))
        make_b0_se_pass_through(backbone)
        return backbone, f"EfficientNet-Lite0 ImageNet tensors, SE pass-through ({path.name})"
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        backbone.load_weights(path)
    except (ValueError, OSError) as err:
        raise WeightsError(f"{path} does not fit EfficientNetB0: {err}") from None
    return backbone, f"Keras weights file {path.name}"


def select_rows(rows: list[SplitRow], config: TrainConfig) -> dict[str, list[SplitRow]]:
    """train/val/test rows: the fixed split, or for CV fold k test = k, val = k+1, train = rest."""
    usable = [row for row in rows if row.split != "excluded"]
    if config.fold is None:
        parts = {name: [r for r in usable if r.split == name] for name in ("train", "val", "test")}
    else:
        val_fold = (config.fold + 1) % 5
        parts = {
            "train": [r for r in usable if r.fold not in (config.fold, val_fold)],
            "val": [r for r in usable if r.fold == val_fold],
            "test": [r for r in usable if r.fold == config.fold],
        }
    if config.limit:
        parts = {
            name: [r for label in CLASS_NAMES for r in [r for r in part if r.label == label]
                   [: config.limit]]
            for name, part in parts.items()
        }
    return parts


def class_weights(labels: np.ndarray, power: float = 1.0) -> dict[int, float]:
    """(n / (k * n_c)) ** power: 1 balances the classes fully, 0.5 halfway (in log terms), 0 not
    at all; normalised so the average weight per image stays 1."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(float)
    raw = np.where(counts > 0, (labels.size / (len(CLASS_NAMES) * np.maximum(counts, 1))) ** power,
                   0.0)
    raw *= labels.size / float((raw * counts).sum())
    return {i: float(w) for i, w in enumerate(raw)}


def set_finetunable(backbone: keras.Model, unfreeze_from: str | None) -> None:
    """Freeze every BatchNorm, and every layer before the first one named `unfreeze_from*`."""
    names = [layer.name for layer in backbone.layers]
    start = 0
    if unfreeze_from:
        matches = [i for i, name in enumerate(names) if name.startswith(unfreeze_from)]
        if not matches:
            raise ValueError(f"no backbone layer starts with {unfreeze_from!r}")
        start = matches[0]
    for index, layer in enumerate(backbone.layers):
        frozen = index < start or isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen


def _compile(model: keras.Model, learning_rate, config: TrainConfig, ema: bool = False) -> None:
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay,
                                       use_ema=ema, ema_momentum=config.ema_decay or 0.99)
    probs_loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    if "mask" not in model.output_names:
        model.compile(optimizer=optimizer, loss=probs_loss, metrics=["accuracy"])
        return
    model.compile(optimizer=optimizer,
                  loss={"probs": probs_loss, "mask": keras.losses.BinaryCrossentropy()},
                  loss_weights={"probs": 1.0, "mask": config.mask_loss_weight},
                  metrics={"probs": ["accuracy"]})


def with_mask_head(model: keras.Model) -> keras.Model:
    """The classifier plus a 1x1-conv lesion-mask head on the backbone's feature map, for
    training only: the two share every layer, and only `model` is saved."""
    features = model.get_layer("avg_pool").input
    logits = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask_conv")(features)
    mask = keras.layers.Flatten(name="mask")(logits)
    return keras.Model(model.input, {"probs": model.output, "mask": mask},
                       name=f"{model.name}_with_mask_head")


def soft_targets(labels: np.ndarray, images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """One-hot labels, mixed with the teachers' averaged probabilities when distilling:
    (1 - w) one_hot + w mean_k teacher_k(image)."""
    one_hot = keras.utils.to_categorical(labels, len(CLASS_NAMES))
    if not config.teachers:
        return one_hot
    teacher_probs = np.mean([
        keras.models.load_model(path).predict(images.astype("float32"), batch_size=32,
                                              verbose=0)
        for path in config.teachers], axis=0)
    return (1.0 - config.distill_weight) * one_hot + config.distill_weight * teacher_probs


def selection_callback(config: TrainConfig, model: keras.Model, data: RunData,
                       site: Site | None) -> BestWeights:
    """Early stopping and best-epoch weights: on the validation loss (of the class output), or
    with `selection="sites"` on the selection score of both sites' validation images."""
    if config.selection == "val_loss":
        name = "val_probs_loss" if config.mask_loss_weight else "val_loss"
        return BestWeights(lower_loss(name), config.patience)
    if site is None or "val" not in data.site:
        raise ValueError("selection 'sites' needs the second site's validation patients")

    def score(_logs: dict) -> float:
        (busi_images, busi_labels), (site_images, site_labels) = data.busi["val"], data.site["val"]
        return selection_score({
            "val": classification_metrics(busi_labels, _predict(model, busi_images)),
            f"{site.name}_val": lesion_metrics(site_labels, _predict(model, site_images), None),
        }, site.name)

    return BestWeights(score, config.patience)


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model.predict(images.astype("float32"), batch_size=32, verbose=0)


def _site_arrays(site: Site, config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = select_rows(site.rows, config)
    if not config.bus_bra:  # never trained on: every non-test patient is held-out validation
        parts["heldout"] = parts["train"] + parts["val"]
    return {name: load_images(part, site.root, desc=f"{site.name} {name}",
                              size=config.image_size)
            for name, part in parts.items() if part}


def _joined(*arrays: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([images for images, _ in arrays]),
            np.concatenate([labels for _, labels in arrays]))


@dataclass
class RunData:
    """The arrays of one run: BUSI parts, the second site's parts, and what trains/validates."""

    parts: dict[str, list[SplitRow]]
    busi: dict[str, tuple[np.ndarray, np.ndarray]]
    site: dict[str, tuple[np.ndarray, np.ndarray]]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    masks: dict[str, np.ndarray]


def _training_masks(config: TrainConfig, parts: dict[str, list[SplitRow]], busi_root: Path,
                    site: Site | None) -> dict[str, np.ndarray]:
    """Lesion masks of the train and val images, in the order `load_run_data` joins them."""
    site_parts = select_rows(site.rows, config) if site else {}
    masks = {}
    for name in ("train", "val"):
        size = config.image_size
        pieces = [model_input_masks(parts[name], busi_root, size)] if config.busi_train else []
        if config.bus_bra:
            pieces.append(model_input_masks(site_parts[name], site.root, size))
        masks[name] = np.concatenate(pieces)
    return masks


def load_run_data(config: TrainConfig, rows: list[SplitRow], busi_root: Path,
                  site: Site | None) -> RunData:
    """Load every image a run trains, validates or is evaluated on."""
    if config.bus_bra and site is None:
        raise ValueError("bus_bra training needs the BUS-BRA site data")
    if not (config.busi_train or config.bus_bra):
        raise ValueError("nothing to train on: BUSI is left out and BUS-BRA is not used")
    parts = select_rows(rows, config)
    busi = {name: load_images(part, busi_root, desc=name, size=config.image_size)
            for name, part in parts.items()}
    site_arrays = _site_arrays(site, config) if site else {}
    train, val = busi["train"], busi["val"]
    if config.bus_bra and config.busi_train:
        train, val = _joined(train, site_arrays["train"]), _joined(val, site_arrays["val"])
    elif config.bus_bra:  # the reverse direction: BUS-BRA only, BUSI held out
        train, val = site_arrays["train"], site_arrays["val"]
    masks = _training_masks(config, parts, busi_root, site) if config.mask_loss_weight else {}
    return RunData(parts, busi, site_arrays, train, val, masks)


def fit(config: TrainConfig, rows: list[SplitRow], busi_root: Path, out_dir: Path,
        site: Site | None = None) -> dict:
    """Train one model, evaluate it on val and test, save model + config + metrics in out_dir.

    With a second site, its patients are always evaluated (benign-vs-malignant metrics); with
    `config.bus_bra` its training patients join the training set and its validation patients
    the validation set (early stopping and the threshold then see both sites).
    """
    keras.utils.set_random_seed(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_run_data(config, rows, busi_root, site)
    x_train, y_train = data.train
    weights = class_weights(y_train, config.class_weight_power)
    train_data = dataset(x_train, soft_targets(y_train, x_train, config), config.batch_size,
                         augment=True, seed=config.seed, site_levers=config.site_levers,
                         masks=data.masks.get("train"),
                         sample_weights=np.array([weights[label] for label in y_train]))
    val_data = dataset(*data.val, config.batch_size, augment=False, seed=config.seed,
                       masks=data.masks.get("val"))

    backbone, initialisation = build_backbone(config)
    pretrained = initialisation != "random"
    model = classifier(backbone, config.dropout, bn_inference=pretrained)
    trained = with_mask_head(model) if config.mask_loss_weight else model
    history: dict[str, list] = {}
    started = time.time()
    if pretrained and config.head_epochs:
        backbone.trainable = False
        _compile(trained, config.head_lr, config)
        run = trained.fit(train_data, validation_data=val_data, epochs=config.head_epochs,
                          verbose=2)
        history["head"] = _history(run)
    backbone.trainable = True
    if pretrained:
        set_finetunable(backbone, config.unfreeze_from)
    steps = int(np.ceil(len(x_train) / config.batch_size)) * config.finetune_epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.finetune_lr, max(steps, 1))
    _compile(trained, schedule, config, ema=config.ema_decay > 0)
    best = selection_callback(config, model, data, site)
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema_decay else []
    run = trained.fit(train_data, validation_data=val_data, epochs=config.finetune_epochs,
                      callbacks=[*averaging, best], verbose=2)
    history["finetune"] = {**_history(run), "selection_score": best.scores,
                           "best_epoch": [best.best_epoch]}
    seconds = time.time() - started

    results = evaluate(model, config, data, site)
    results.update(initialisation=initialisation, train_seconds=round(seconds, 1))
    model.save(out_dir / "model.keras")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return results


def evaluate_trained(model_file: Path, config: TrainConfig, rows: list[SplitRow],
                     busi_root: Path, out_dir: Path, site: Site | None = None) -> dict:
    """Evaluate an already trained model exactly as `fit` evaluates its own (e.g. the shipped
    BUSI-only model against a second site), saving results.json and the model in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(model_file)
    results = evaluate(model, config, load_run_data(config, rows, busi_root, site), site)
    results["initialisation"] = f"trained model {model_file}"
    shutil.copyfile(model_file, out_dir / "model.keras")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def evaluate(model: keras.Model, config: TrainConfig, data: RunData, site: Site | None) -> dict:
    """A run's results: the threshold chosen on its validation data, BUSI val/test metrics,
    the second site's benign-vs-malignant metrics, and the selection score."""

    def predict(images: np.ndarray) -> np.ndarray:
        return _predict(model, images)

    results = {"config": asdict(config), "preprocessing": preprocessing_id(config.image_size),
               "counts": {name: len(part) for name, part in data.parts.items()},
               "trained_on": {"train": len(data.train[1]), "val": len(data.val[1])}}
    threshold = choose_threshold(data.val[1], predict(data.val[0])[:, MALIGNANT_INDEX])
    results["threshold"] = threshold
    results["threshold_rule"] = ("highest T with malignant recall >= 0.95 on "
                                 + {(True, False): "BUSI", (True, True): "BUSI + BUS-BRA",
                                    (False, True): "BUS-BRA"}[config.busi_train, config.bus_bra]
                                 + " validation")
    for name in ("val", "test"):
        results[name] = classification_metrics(data.busi[name][1], predict(data.busi[name][0]),
                                               threshold)
    for name, (images, labels) in data.site.items():
        results[f"{site.name}_{name}"] = lesion_metrics(labels, predict(images), threshold)
    if site:
        results["selection_score"] = selection_score(results, site.name)
    return results


def selection_score(results: dict, site_name: str) -> float:
    """The rule that picks the shipped model, fixed before any external test set was looked
    at: the mean of BUSI-validation macro-F1 and second-site-validation benign-vs-malignant
    AUROC (Keras model, validation data only)."""
    return float((results["val"]["macro_f1"]
                  + results[f"{site_name}_val"]["auc_benign_vs_malignant"]) / 2)


def cross_validate(config: TrainConfig, rows: list[SplitRow], busi_root: Path,
                   out_dir: Path, site: Site | None = None) -> dict:
    """Run the recipe on the 5 grouped CV folds; mean and sd of the test-fold metrics."""
    folds = [fit(replace(config, fold=k), rows, busi_root, out_dir / f"fold{k}", site)
             for k in range(5)]
    summary = summarise_folds(config, folds)
    (out_dir / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarise_folds(config: TrainConfig, folds: list[dict]) -> dict:
    """Mean, sd and per-fold values of each fold's BUSI test metrics, and of the second site's
    test benign-vs-malignant AUROC when the runs evaluated one (the same patients every fold)."""
    summary: dict = {"config": asdict(replace(config, fold=None)), "folds": len(folds)}
    picks = {metric: ("test", metric) for metric in
             ("accuracy", "balanced_accuracy", "macro_f1", "malignant_recall_argmax",
              "roc_auc_ovr")}
    for key in sorted({k for result in folds for k in result if k.endswith("_test")}):
        picks[f"{key}_auc_benign_vs_malignant"] = (key, "auc_benign_vs_malignant")
    for name, (part, metric) in picks.items():
        values = [result[part][metric] for result in folds]
        summary[name] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)),
                         "per_fold": values}
    return summary


def _history(run: keras.callbacks.History) -> dict[str, list[float]]:
    return {key: [float(v) for v in values] for key, values in run.history.items()}
