"""`busi train`: train a BUSI classifier with the seed's recipe and save it with its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, models_dir
from edge_infer.splits import read_split
from train.architectures import ARCHITECTURES
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir
from train.pretrained import WeightsError
from train.recipe import SELECTIONS, TrainConfig

DEFAULTS = TrainConfig()


def _multiple_of_32(_ctx: click.Context, _param: click.Parameter, size: int) -> int:
    """The --image-size check: the backbone downsamples 32x, so the side must divide by 32."""
    if size % 32:
        raise click.BadParameter(f"{size} is not a multiple of 32 (the backbone's stride)")
    return size


@click.command(help="Train backbone -> GAP -> Dropout -> Dense(3): head first, then fine-tune.\n\n"
               "WEIGHTS: 'imagenet' (Lite0: the offline ../shared/weights .npz; B0: Keras's "
               "download), 'none' (from scratch), or a PATH (Lite0 .npz; for B0 a Keras weights "
               "file, or a Lite0 .npz to initialise B0 from Lite0 with SE set to pass-through).")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=DEFAULTS.arch, show_default=True)
@click.option("--weights", default=DEFAULTS.weights, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: model.keras, results.json, history.json.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
              help="Split manifest (default: the shipped models/busi_split.csv).")
@click.option("--head-epochs", default=DEFAULTS.head_epochs, show_default=True)
@click.option("--finetune-epochs", default=DEFAULTS.finetune_epochs, show_default=True)
@click.option("--head-lr", default=DEFAULTS.head_lr, show_default=True)
@click.option("--finetune-lr", default=DEFAULTS.finetune_lr, show_default=True)
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True)
@click.option("--dropout", default=DEFAULTS.dropout, show_default=True)
@click.option("--patience", default=DEFAULTS.patience, show_default=True,
              help="Early-stopping patience (epochs without a lower validation loss).")
@click.option("--class-weight-power", default=DEFAULTS.class_weight_power, show_default=True,
              help="Class weights (n / (k n_c)) ** P: 1 fully balanced, 0.5 milder, 0 none.")
@click.option("--unfreeze-from", default=DEFAULTS.unfreeze_from,
              help="Fine-tune only from this backbone layer up (e.g. block4a); default: all.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--fold", type=click.IntRange(0, 4), default=None,
              help="Cross-validation: test on this fold, validate on the next, train on the rest.")
@click.option("--cv", is_flag=True,
              help="Run all 5 CV folds into OUT/fold<k> and write OUT/cv_summary.json.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Use at most N images per class in each part (smoke runs).")
@click.option("--bus-bra", is_flag=True,
              help="Train on BUS-BRA's training patients too (a second site, no normal class); "
                   "its validation patients join early stopping and the threshold.")
@click.option("--no-busi-train", "busi_train", is_flag=True, default=True, flag_value=False,
              help="With --bus-bra: train and validate on BUS-BRA only and hold BUSI out (the "
                   "reverse site-held-out direction).")
@click.option("--site-levers", is_flag=True,
              help="Add the cross-site augmentations: gain/gamma, resolution loss, zoom-out, "
                   "sector masks, burned-in text and calipers.")
@click.option("--mask-loss-weight", type=click.FloatRange(0), default=DEFAULTS.mask_loss_weight,
              show_default=True, help="Train a lesion-mask head on the feature map too (BUSI "
              "_mask files, BUS-BRA masks/), with this loss weight; 0: off. The head is dropped "
              "from the saved model.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True),
              default=DEFAULTS.ema_decay, show_default=True,
              help="Fine-tune with an exponential moving average of the weights (e.g. 0.99), "
                   "validated and saved averaged; 0: off.")
@click.option("--selection", type=click.Choice(SELECTIONS), default=DEFAULTS.selection,
              show_default=True, help="What picks the best epoch and stops fine-tuning: the "
              "validation loss, or 'sites': the mean of BUSI-val macro-F1 and BUS-BRA-val AUROC.")
@click.option("--teacher", "teachers", multiple=True,
              type=click.Path(dir_okay=False, exists=True),
              help="Distil: a trained .keras model whose probabilities on the training images "
                   "are mixed into the labels (repeat for an ensemble; they are averaged).")
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=DEFAULTS.distill_weight,
              show_default=True, help="Weight of the teachers' probabilities in the labels.")
@click.option("--image-size", type=click.IntRange(96, 512), default=DEFAULTS.image_size,
              show_default=True, callback=_multiple_of_32,
              help="Input side in pixels (a multiple of 32). The runtime serves 224 px models "
                   "only: other sizes are for screening the resolution lever.")
@click.option("--bus-bra-dir", type=click.Path(file_okay=False),
              help="BUS-BRA folder (or $BUS_BRA_DIR). When found it is always evaluated: its "
                   "validation patients (and all non-test ones if not trained on) per run.")
@click.option("--evaluate", "trained", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Do not train: evaluate this trained .keras model as a run "
              "(OUT gets results.json and a copy of the model; pass the options it was "
              "trained with, e.g. --bus-bra).")
def main(arch: str, weights: str, out: Path, busi_dir: str | None, split_file: str | None,
         head_epochs: int, finetune_epochs: int, head_lr: float, finetune_lr: float,
         batch_size: int, dropout: float, patience: int, class_weight_power: float,
         unfreeze_from: str | None, seed: int, fold: int | None, cv: bool, limit: int | None,
         bus_bra: bool, busi_train: bool, site_levers: bool, mask_loss_weight: float,
         ema_decay: float, selection: str, teachers: tuple[str, ...], distill_weight: float,
         image_size: int, bus_bra_dir: str | None, trained: Path | None) -> None:
    from train.recipe import cross_validate, evaluate_trained, fit

    if cv and fold is not None:
        raise click.UsageError("--cv runs every fold; do not combine it with --fold")
    config = TrainConfig(arch=arch, weights=weights, head_epochs=head_epochs,
                         finetune_epochs=finetune_epochs, head_lr=head_lr,
                         finetune_lr=finetune_lr, batch_size=batch_size, dropout=dropout,
                         patience=patience, class_weight_power=class_weight_power,
                         unfreeze_from=unfreeze_from, seed=seed, fold=fold,
                         limit=limit, bus_bra=bus_bra, busi_train=busi_train,
                         site_levers=site_levers, mask_loss_weight=mask_loss_weight,
                         ema_decay=ema_decay, selection=selection,
                         teachers=tuple(str(Path(t).resolve()) for t in teachers),
                         distill_weight=distill_weight, image_size=image_size)
    try:
        rows, root = read_split(split_file), resolve_busi_dir(busi_dir)
        site = _bus_bra_site(bus_bra_dir, required=bus_bra)
        if cv:
            click.echo(json.dumps(cross_validate(config, rows, root, out, site), indent=2))
            return
        if trained:
            results = evaluate_trained(trained, config, rows, root, out, site)
        else:
            results = fit(config, rows, root, out, site)
    except (WeightsError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    summary = {part: {k: round(results[part][k], 4)
                      for k in ("accuracy", "macro_f1", "malignant_recall_argmax")}
               for part in ("val", "test")}
    if site:
        summary["bus_bra_val_auc"] = round(results["bus_bra_val"]["auc_benign_vs_malignant"], 4)
        summary["selection_score"] = round(results["selection_score"], 4)
    click.echo(json.dumps({"out": str(out), "threshold": results["threshold"], **summary}))


def _bus_bra_site(path: str | None, required: bool):
    """BUS-BRA with its patient split, or None (with a note) when absent and not required."""
    from train.recipe import Site

    try:
        root = resolve_bus_bra_dir(path)
    except FileNotFoundError as err:
        if required:
            raise
        click.echo(f"note: {err}; training and evaluating on BUSI only", err=True)
        return None
    return Site("bus_bra", read_split(models_dir() / BUS_BRA_SPLIT_FILENAME), root)


if __name__ == "__main__":
    main()
