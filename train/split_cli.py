"""`python -m busi split`: write the grouped, stratified BUSI split manifest."""

from __future__ import annotations

from pathlib import Path

import click

from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, SPLIT_FILENAME, models_dir
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir
from train.site_split import make_bus_bra_split
from train.split import make_split, summary, write_split


@click.command(help="Group BUSI near-duplicates and write the train/val/test + CV-fold manifest; "
                    "with --bus-bra, write BUS-BRA's patient-level split instead.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--bus-bra", "bus_bra_dir", type=click.Path(file_okay=False), default=None,
              is_flag=False, flag_value="", help="Split BUS-BRA (its folder, or $BUS_BRA_DIR / "
              f"the default when given without a value) into models/{BUS_BRA_SPLIT_FILENAME}.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Output CSV (default: models/{SPLIT_FILENAME}).")
@click.option("--seed", default=0, show_default=True, help="Seed of the grouped splitters.")
def main(busi_dir: str | None, bus_bra_dir: str | None, out: Path | None, seed: int) -> None:
    if bus_bra_dir is not None:
        rows = make_bus_bra_split(resolve_bus_bra_dir(bus_bra_dir or None), seed=seed)
        out = out or models_dir() / BUS_BRA_SPLIT_FILENAME
    else:
        rows = make_split(resolve_busi_dir(busi_dir), seed=seed)
        out = out or models_dir() / SPLIT_FILENAME
    write_split(rows, out)
    click.echo(summary(rows))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
