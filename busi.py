"""`python -m busi COMMAND`: the pipeline from data to reports, run from a checkout.

Every command works on this checkout's `models/` (whatever is installed) and loads its heavy
libraries only when it runs. The rebuild order is in docs/pipeline.md.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

CHECKOUT_MODELS = Path(__file__).resolve().parent / "models"
COMMANDS: dict[str, tuple[str, str]] = {
    "split": ("train.split_cli", "Group BUSI near-duplicates and write the split manifests."),
    "train": ("train.cli", "Train a model with the one recipe (options are the levers)."),
    "publish": ("train.publish", "Copy a trained run into models/ as the Keras model."),
    "convert": ("convert.cli", "Keras -> TFLite variants, verified; refits what depends on "
                               "the model."),
    "calibrate": ("convert.calibrate", "Refit the shipped temperature and threshold only."),
    "ood-fit": ("convert.ood_fit", "Refit the input check only."),
    "bench": ("benchmarks.cli", "Accuracy and latency of every variant: reports/latest.md."),
    "sites": ("benchmarks.sites", "Each trained run at every hospital: reports/sites.md."),
    "site-halves": ("benchmarks.site_halves", "Site profiles on held-out halves of a new "
                                              "hospital: reports/site_halves.md."),
    "ood-eval": ("benchmarks.ood_eval", "The input check on every image set: reports/ood.md."),
    "cam-eval": ("benchmarks.cam_eval", "Heat-maps against the lesion masks: reports/cam.md."),
    "load": ("benchmarks.load", "The web app under concurrent uploads: reports/load.md."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when one is run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).main

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The busi-edge pipeline: split, train, publish, convert, bench (docs/pipeline.md)."""
    os.environ.setdefault("EDGE_INFER_MODELS", str(CHECKOUT_MODELS))


if __name__ == "__main__":
    main(prog_name="python -m busi")
