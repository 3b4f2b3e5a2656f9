"""Training: the offline Lite0 weights reproduce their ImageNet check, B0 initialises from them,
the training inputs are the runtime's inputs, and a seconds-long fit runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from required import missing

keras = pytest.importorskip("keras", reason="training extra ([train]) not installed")

from edge_infer.preprocess import decode_image, to_model_input  # noqa: E402
from edge_infer.splits import load_images, split_files  # noqa: E402
from train.architectures import (  # noqa: E402
    block_names,
    classifier,
    efficientnet_lite0_backbone,
    efficientnetb0_backbone,
)
from train.pretrained import (  # noqa: E402
    LITE0_WEIGHTS_FILE,
    WeightsError,
    input_normalization,
    lite0_imagenet_classifier,
    load_into_backbone,
    make_b0_se_pass_through,
    read_lite0_tensors,
)
from train.recipe import PROJECT_ROOT, TrainConfig, build_backbone, fit  # noqa: E402

WEIGHTS = PROJECT_ROOT / LITE0_WEIGHTS_FILE


@pytest.fixture(scope="module")
def lite0_tensors():
    if not WEIGHTS.is_file():
        missing(f"offline Lite0 weights absent: {WEIGHTS}")
    return read_lite0_tensors(WEIGHTS)


@pytest.mark.parametrize("photo, imagenet_class, probability", [
    ("chelsea", 285, 0.79),  # Egyptian cat
    ("coffee", 967, 0.90),  # espresso
])
def test_lite0_build_reproduces_the_weights_imagenet_check(lite0_tensors, photo,
                                                          imagenet_class, probability):
    data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    from PIL import Image

    backbone = efficientnet_lite0_backbone()
    load_into_backbone(backbone, lite0_tensors)
    kernel, bias = lite0_imagenet_classifier(lite0_tensors)
    # The provenance check is on ImageNet colour photos, so it feeds RGB, not the luma model input.
    photo_rgb = Image.fromarray(getattr(data, photo)())
    image = np.asarray(photo_rgb.resize((224, 224), Image.Resampling.BILINEAR))
    features = backbone.predict(image[None].astype("float32"), verbose=0).mean(axis=(1, 2))
    logits = features @ kernel + bias
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert probs.argmax() == imagenet_class
    assert probs.max() == pytest.approx(probability, abs=0.02)


def test_b0_initialises_from_lite0_with_se_passing_through(lite0_tensors):
    backbone = efficientnetb0_backbone(None)
    assert load_into_backbone(backbone, lite0_tensors) == 4 + 6 * len(block_names()) - 2
    assert make_b0_se_pass_through(backbone) == len(block_names())
    gate = backbone.get_layer("block3a_se_expand")
    assert np.all(gate.get_weights()[0] == 0) and np.all(gate.get_weights()[1] > 10)
    stem = backbone.get_layer("stem_conv").get_weights()[0]
    assert np.array_equal(stem, lite0_tensors["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_weights_errors_are_clear(tmp_path, lite0_tensors):
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(TrainConfig(weights=str(tmp_path / "missing.npz")))
    wrong = dict(lite0_tensors)
    wrong["_conv_stem.weight"] = np.zeros((16, 3, 3, 3), np.float32)
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(WeightsError, match="stem_conv"):
        build_backbone(TrainConfig(weights=str(tmp_path / "wrong.npz")))
    (tmp_path / "text.npz").write_text("not weights")
    with pytest.raises(WeightsError, match="cannot read"):
        build_backbone(TrainConfig(weights=str(tmp_path / "text.npz")))


def test_training_inputs_equal_runtime_inputs(busi_root):
    from train.data import dataset

    rows = split_files("val")[:12]
    images, labels = load_images(rows, busi_root)
    batch, _ = next(iter(dataset(images, labels, batch_size=12, augment=False, seed=0)))
    for row, trained_on in zip(rows, batch.numpy()):
        served = to_model_input(decode_image(busi_root / row.file).image)
        assert trained_on.dtype == np.float32
        assert np.array_equal(trained_on, served.astype(np.float32)), row.file


def test_augmentation_changes_images_but_keeps_range(busi_root):
    from train.data import dataset

    rows = split_files("train")[:8]
    images, labels = load_images(rows, busi_root)
    batch, _ = next(iter(dataset(images, labels, batch_size=8, augment=True, seed=1)))
    batch = batch.numpy()
    assert batch.min() >= 0 and batch.max() <= 255
    assert not np.array_equal(np.sort(batch.reshape(8, -1), axis=1),
                              np.sort(images.reshape(8, -1).astype(np.float32), axis=1))


def test_a_seconds_long_fit_saves_a_working_model(busi_root, split_rows, tmp_path):
    config = TrainConfig(head_epochs=1, finetune_epochs=1, limit=3, batch_size=4)
    results = fit(config, split_rows, busi_root, tmp_path)
    assert results["counts"] == {"train": 9, "val": 9, "test": 9}
    assert results["trained_on"] == {"train": 9, "val": 9}  # BUSI only: the same images
    assert 0.0 <= results["threshold"] <= 1.0
    assert set(json.loads((tmp_path / "history.json").read_text())) == {"head", "finetune"}
    model = keras.models.load_model(tmp_path / "model.keras")
    probs = model.predict(load_images(split_files("test")[:2], busi_root)[0].astype("float32"),
                          verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(model.layers[1], keras.Model) and model.layers[1].name == "efficientnet_lite0"


def test_classifier_head_is_the_seeds():
    model = classifier(efficientnet_lite0_backbone(), dropout=0.3)
    names = [layer.__class__.__name__ for layer in model.layers[2:]]
    assert names == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    assert model.output_shape == (None, 3)


def test_b0_input_scaling_is_the_same_before_and_after_saving(tmp_path):
    backbone, _ = build_backbone(TrainConfig(arch="efficientnetb0", weights="none"))
    model = classifier(backbone)
    image = np.zeros((1, 224, 224, 3), np.float32)
    scaled = keras.Model(backbone.input, input_normalization(backbone).output)
    assert np.allclose(scaled.predict(image, verbose=0), -127 / 128, atol=1e-5)
    model.save(tmp_path / "b0.keras")
    reloaded = keras.models.load_model(tmp_path / "b0.keras")
    assert np.allclose(reloaded.predict(image, verbose=0), model.predict(image, verbose=0),
                       atol=1e-6)


def test_site_levers_keep_range_grey_and_add_marks(busi_root):
    import tensorflow as tf

    from train.site_augment import overlay_bank, site_augment

    bank = overlay_bank(seed=0, size=32)
    assert bank.shape == (32, 224, 224, 1)
    marked = (bank.numpy() > 0).mean(axis=(1, 2, 3))
    assert marked.min() > 0 and marked.max() < 0.1  # text and calipers, not a whole image
    images, _ = load_images(split_files("train")[:16], busi_root)
    out = site_augment(tf.constant(images, tf.float32), bank, seed=3).numpy()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out[..., 0], out[..., 2])  # still a grey (luma) model input
    assert not np.allclose(out, images)


def test_lesion_metrics_of_a_site_without_normals():
    from edge_infer.metrics import lesion_metrics

    labels = np.array([1, 1, 2, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.5, 0.4], [0.1, 0.2, 0.7]])
    result = lesion_metrics(labels, probs, threshold=0.35)
    assert result["auc_benign_vs_malignant"] == 1.0
    assert result["malignant_recall_argmax"] == 0.5 and result["malignant_recall_at_threshold"] == 1
    assert result["malignant_specificity_at_threshold"] == 1.0
    assert result["called_normal"] == 0.25


def test_a_seconds_long_fit_with_a_second_site(busi_root, bus_bra_root, split_rows, tmp_path):
    from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, models_dir
    from edge_infer.splits import read_split
    from train.recipe import Site

    site = Site("bus_bra", read_split(models_dir() / BUS_BRA_SPLIT_FILENAME), bus_bra_root)
    config = TrainConfig(head_epochs=0, finetune_epochs=1, limit=2, batch_size=4, bus_bra=True,
                         site_levers=True)
    results = fit(config, split_rows, busi_root, tmp_path, site)
    assert results["bus_bra_val"]["n"] == 4 and results["bus_bra_test"]["n"] == 4
    assert results["trained_on"] == {"train": results["counts"]["train"] + 4,  # both sites
                                     "val": results["counts"]["val"] + 4}
    assert "bus_bra_heldout" not in results  # trained on BUS-BRA: nothing of it is held out
    assert "BUS-BRA" in results["threshold_rule"]
    assert results["selection_score"] == pytest.approx(
        (results["val"]["macro_f1"] + results["bus_bra_val"]["auc_benign_vs_malignant"]) / 2)


def test_reverse_direction_trains_and_validates_on_bus_bra_only(busi_root, bus_bra_root,
                                                                split_rows):
    from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, models_dir
    from edge_infer.splits import read_split
    from train.recipe import Site, load_run_data

    site = Site("bus_bra", read_split(models_dir() / BUS_BRA_SPLIT_FILENAME), bus_bra_root)
    config = TrainConfig(limit=2, bus_bra=True, busi_train=False)
    data = load_run_data(config, split_rows, busi_root, site)
    assert sorted(data.train[1].tolist()) == [1, 1, 2, 2]  # BUS-BRA benign and malignant
    assert np.array_equal(data.val[0], data.site["val"][0])
    assert set(data.busi) == {"train", "val", "test"}  # BUSI still evaluated, held out
    with pytest.raises(ValueError, match="nothing to train on"):
        load_run_data(TrainConfig(busi_train=False), split_rows, busi_root, site)


def test_cv_summary_gives_mean_sd_per_fold_and_the_second_sites_test_auroc():
    from train.recipe import summarise_folds

    accuracies, aurocs = [0.8, 0.7, 0.9, 0.75, 0.85], [0.81, 0.86, 0.9, 0.88, 0.85]
    metrics = ("accuracy", "balanced_accuracy", "macro_f1", "malignant_recall_argmax",
               "roc_auc_ovr")
    folds = [{"test": dict.fromkeys(metrics, acc), "val": {"accuracy": 0.0},
              "bus_bra_test": {"auc_benign_vs_malignant": auc, "n": 81}}
             for acc, auc in zip(accuracies, aurocs)]
    summary = summarise_folds(TrainConfig(bus_bra=True), folds)
    assert summary["folds"] == 5 and summary["config"]["fold"] is None
    assert summary["accuracy"]["per_fold"] == accuracies
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy"]["sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert summary["bus_bra_test_auc_benign_vs_malignant"]["mean"] == pytest.approx(0.86)
    busi_only = summarise_folds(TrainConfig(), [{"test": fold["test"]} for fold in folds])
    assert not any(key.startswith("bus_bra") for key in busi_only)
