"""The training levers are options of the one recipe: lesion-mask head (training only), weight
averaging, selection on both sites and distillation; each runs end to end on real images."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="training extra ([train]) not installed")

from edge_infer.splits import load_images, split_files  # noqa: E402
from train.callbacks import BestWeights  # noqa: E402
from train.data import dataset  # noqa: E402
from train.masks import mask_files, model_input_masks  # noqa: E402
from train.recipe import Site, TrainConfig, fit, soft_targets  # noqa: E402


@pytest.fixture(scope="module")
def bus_bra_site(bus_bra_root):
    from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, models_dir
    from edge_infer.splits import read_split

    return Site("bus_bra", read_split(models_dir() / BUS_BRA_SPLIT_FILENAME), bus_bra_root)


def test_masks_are_found_for_both_sites_and_empty_for_normal(busi_root, bus_bra_site):
    busi_rows = [next(r for r in split_files("train") if r.label == label)
                 for label in ("normal", "benign", "malignant")]
    masks = model_input_masks(busi_rows, busi_root)
    assert masks.shape == (3, 224, 224) and masks.dtype == np.float32
    assert masks[0].max() == 0.0
    assert 0.005 < masks[1].mean() < 0.6 and 0.005 < masks[2].mean() < 0.6
    bus_bra_row = bus_bra_site.rows[0]
    assert mask_files(bus_bra_site.root / bus_bra_row.file) == [
        bus_bra_site.root / "masks" / bus_bra_row.file.split("/")[1]]
    assert model_input_masks([bus_bra_row], bus_bra_site.root).max() > 0.5


def test_augmented_mask_moves_with_the_image(busi_root):
    rows = [r for r in split_files("train") if r.label == "malignant"][:8]
    images, labels = load_images(rows, busi_root)
    masks = model_input_masks(rows, busi_root)
    plain, plain_targets = next(iter(dataset(images, labels, 8, augment=False, seed=0,
                                             masks=masks)))
    moved, moved_targets = next(iter(dataset(images, labels, 8, augment=True, seed=3,
                                             masks=masks)))
    assert plain_targets["mask"].shape == (8, 49)
    assert np.allclose(plain_targets["mask"].numpy().mean(axis=1),
                       masks.mean(axis=(1, 2)), atol=1e-5)
    grid = moved_targets["mask"].numpy()
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    assert not np.allclose(grid, plain_targets["mask"].numpy())


def test_soft_targets_mix_the_teachers_in(busi_root, tmp_path):
    uniform = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(3, activation="softmax",
                                                   kernel_initializer="zeros")])
    teacher = tmp_path / "uniform.keras"
    uniform.save(teacher)
    labels = np.array([0, 1, 2])
    images = np.zeros((3, 224, 224, 3), np.uint8)
    plain = soft_targets(labels, images, TrainConfig())
    assert np.array_equal(plain, np.eye(3))
    mixed = soft_targets(labels, images, TrainConfig(teachers=(str(teacher),),
                                                     distill_weight=0.3))
    assert np.allclose(mixed, 0.7 * np.eye(3) + 0.1)
    assert np.allclose(mixed.sum(axis=1), 1.0)


def test_best_weights_restores_the_best_epoch_and_stops():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    scores = iter([0.1, 0.5, 0.2, 0.3, 0.4])
    seen = []

    def score(_logs):
        seen.append(model.get_weights()[0].copy())
        return next(scores)

    callback = BestWeights(score, patience=2)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(np.ones((4, 1)), np.full((4, 1), 3.0), epochs=5, verbose=0,
              callbacks=[callback])
    assert callback.best_epoch == 1 and len(callback.scores) == 4  # stopped after 2 worse
    assert np.array_equal(model.get_weights()[0], seen[1])


def test_all_levers_run_and_the_mask_head_is_not_saved(busi_root, split_rows, bus_bra_site,
                                                       tmp_path):
    teacher_config = TrainConfig(head_epochs=1, finetune_epochs=1, limit=2, batch_size=4)
    fit(teacher_config, split_rows, busi_root, tmp_path / "teacher", bus_bra_site)
    config = TrainConfig(head_epochs=1, finetune_epochs=2, limit=2, batch_size=4, bus_bra=True,
                         mask_loss_weight=0.5, ema_decay=0.9, selection="sites",
                         teachers=(str(tmp_path / "teacher" / "model.keras"),))
    results = fit(config, split_rows, busi_root, tmp_path / "student", bus_bra_site)
    assert results["trained_on"] == {"train": 6 + 4, "val": 6 + 4}
    model = keras.models.load_model(tmp_path / "student" / "model.keras")
    assert not [layer.name for layer in model.layers if layer.name.startswith("mask")]
    assert model.output_shape == (None, 3)
    import json

    history = json.loads((tmp_path / "student" / "history.json").read_text())
    assert len(history["finetune"]["selection_score"]) == 2
    assert "probs_loss" in history["finetune"]  # the class output trained beside the mask


def test_sites_selection_needs_the_second_site(busi_root, split_rows, tmp_path):
    config = TrainConfig(head_epochs=0, finetune_epochs=1, limit=2, batch_size=4,
                         selection="sites")
    with pytest.raises(ValueError, match="second site"):
        fit(config, split_rows, busi_root, tmp_path, None)




def test_image_size_trains_a_larger_model_that_publish_refuses(busi_root, split_rows,
                                                               bus_bra_site, tmp_path):
    from click.testing import CliRunner

    from train.publish import main as publish

    config = TrainConfig(head_epochs=0, finetune_epochs=1, limit=2, batch_size=4, bus_bra=True,
                         site_levers=True, mask_loss_weight=0.5, image_size=256)
    results = fit(config, split_rows, busi_root, tmp_path, bus_bra_site)
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.input_shape == (None, 256, 256, 3)
    assert results["preprocessing"] == "luma8-exif-bilinear256-v2"
    lesion = [r for r in split_files("train") if r.label == "malignant"][:1]
    masks = model_input_masks(lesion, busi_root, 256)
    assert masks.shape == (1, 256, 256) and masks.max() == 1.0
    refused = CliRunner().invoke(publish, [str(tmp_path)])
    assert refused.exit_code == 1 and "224 px models only" in refused.output
