"""`python -m busi bench`: accuracy and latency of every variant of an
architecture against its Keras model, written as a report (latest.md, latest.json, plots)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from benchmarks.machine import command_line
from edge_infer.manifest import ModelError, models_dir
from train.datasets import EXTERNAL_ENV, resolve_busi_dir, resolve_external_dir

DEFAULT_OUT = Path(__file__).resolve().parent / "reports"


def _threads(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if any(c < 1 for c in counts):
        raise click.BadParameter("thread counts must be >= 1")
    return counts


@click.command(help=__doc__)
@click.option("--arch", default=None, help="Architecture in the manifest (default: its default).")
@click.option("--quick", is_flag=True,
              help="A few images and repeats: checks the benchmark works (used by the tests).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Folder for latest.md, latest.json and the plots.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--external-dir", type=click.Path(file_okay=False),
              help=f"External test set BrEaST-Lesions_USG (or ${EXTERNAL_ENV}; default "
                   "../shared/datasets/breast_lesions_usg); its section is skipped if absent.")
@click.option("--threads", "threads_text", default=None,
              help="Comma-separated thread counts to time (default 1,2).")
@click.option("--runs", type=click.IntRange(1), default=None,
              help="Timed runs per latency figure (default 200; 5 with --quick).")
def main(arch: str | None, quick: bool, out: Path, busi_dir: str | None,
         external_dir: str | None, threads_text: str | None, runs: int | None) -> None:
    """Run the benchmark and write the report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.plots import make_plots
    from benchmarks.report import write_report
    from benchmarks.run import FULL, QUICK, run_benchmark

    settings = (QUICK if quick else FULL).with_overrides(_threads(threads_text), runs)
    command = command_line("bench")
    external, external_missing = None, ""
    try:
        external = resolve_external_dir(external_dir)
    except FileNotFoundError as err:
        external_missing = str(err)
        click.echo(f"note: {err}: the report skips the external-hospital section", err=True)
    try:
        root = resolve_busi_dir(busi_dir)
        results = run_benchmark(settings, arch, root, models_dir(), command, external,
                                external_missing)
    except (ModelError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = make_plots(results, out)
    json_path, md_path = write_report(results, out)
    click.echo(f"wrote {md_path}, {json_path} and {len(results['plots'])} plots "
               f"({results['duration_s']:.0f} s)", err=True)


if __name__ == "__main__":
    main()
