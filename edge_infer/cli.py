"""`edge-infer`: classify breast-ultrasound images with the shipped TFLite model.

Exit codes: 0 every input classified; 1 the model could not be loaded; 2 usage error;
3 some inputs could not be read (each named on stderr; the others are still classified).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import click
from tqdm import tqdm

from edge_infer.classifier import Classifier
from edge_infer.decision import MODES
from edge_infer.inputs import expand_inputs
from edge_infer.manifest import ModelError, read_manifest
from edge_infer.preprocess import ImageError, decode_image, to_model_input
from edge_infer.spec import CLASS_NAMES
from edge_infer.tflite_model import InterpreterMissing

EXIT_MODEL = 1
EXIT_UNREADABLE = 3
PROGRESS_MIN_IMAGES = 10
DEFAULT_THREADS = min(4, os.cpu_count() or 1)


class DefaultToClassify(click.Group):
    """A group whose first argument, when it is not a subcommand, is an image to classify."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["classify", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToClassify, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Classify breast-ultrasound images as normal / benign / malignant on a CPU.

    \b
      edge-infer IMAGE [IMAGE|DIR ...]   classify (the default command)
      edge-infer info                    the shipped models and their validated figures
      edge-infer serve                   the web app and JSON API (pip install ".[serve]")

    A research tool, not a diagnosis. Run `edge-infer classify --help` for every option.
    """


def load_classifier(model: str, threads: int) -> Classifier:
    """The Classifier, or a one-line error and exit code 1."""
    try:
        return Classifier(model, threads=threads)
    except (ModelError, InterpreterMissing, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)


def _finite_threshold(ctx: click.Context, param: click.Parameter,
                      value: float | None) -> float | None:
    """Refuse 'nan', which click's FloatRange lets through (NaN fails no comparison)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a threshold; give a number in [0, 1]")
    return value


def _table_row(name: str, result: dict) -> str:
    probs = "  ".join(f"{result['probs'][c]:.3f}" for c in CLASS_NAMES)
    flags = ",".join(f for f in ("forced" if result["forced_malignant"] else "",
                                 "uncertain" if result["uncertain"] else "") if f)
    return f"{result['prediction']:<10} {probs}  {flags or '-':<16} {name}"


def _csv_row(name: str, result: dict) -> list:
    return [name, result["prediction"], result["argmax_prediction"],
            *(f"{result['probs'][c]:.6f}" for c in CLASS_NAMES),
            result["forced_malignant"], result["uncertain"], result["threshold"],
            result["margin"]]


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE|DIR...")
@click.option("--model", "model_name", default="int8", show_default=True,
              help="int8 | float16 | float32, a manifest key such as efficientnetb0/int8, "
                   "or a model file listed in the manifest.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="argmax (default), or high-sensitivity: call malignant whenever "
                   "prob_malignant >= threshold.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              callback=_finite_threshold,
              help="High-sensitivity threshold (implies that mode); default: the model's "
                   "threshold validated for malignant recall >= 0.95.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON lines).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--threads", type=click.IntRange(1), default=DEFAULT_THREADS, show_default=True,
              help="Interpreter threads.")
@click.option("--quiet", "-q", is_flag=True, help="No notes or progress bar; errors only.")
def classify(inputs: tuple[str, ...], model_name: str, mode: str | None,
             threshold: float | None, as_json: bool, as_csv: bool, threads: int,
             quiet: bool) -> None:
    """Classify images and folders (searched recursively; BUSI *_mask files skipped)."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if mode == "argmax" and threshold is not None:
        raise click.UsageError("--threshold applies to --mode high-sensitivity only")
    mode = mode or ("high-sensitivity" if threshold is not None else "argmax")
    found = expand_inputs(list(inputs))
    classifier = load_classifier(model_name, threads)
    def say(text: str) -> None:
        if not quiet:
            tqdm.write(text, file=sys.stderr)

    for note in found.notes:
        say(f"note: {note}")
    writer = csv.writer(sys.stdout, lineterminator="\n") if as_csv else None
    if writer:
        writer.writerow(["file", "prediction", "argmax_prediction",
                         *(f"prob_{c}" for c in CLASS_NAMES), "forced_malignant",
                         "uncertain", "threshold", "margin"])
    elif not as_json:
        click.echo(f"{'prediction':<10} {'  '.join(f'{c[:5]:>5}' for c in CLASS_NAMES)}  "
                   f"{'flags':<16} file")
    failures = list(found.errors)
    progress = tqdm(found.files, unit="img", file=sys.stderr,
                    disable=quiet or len(found.files) < PROGRESS_MIN_IMAGES)
    for path in progress:
        try:
            decoded = decode_image(path)
            decision = classifier.classify_array(to_model_input(decoded.image), mode, threshold)
        except ImageError as err:
            failures.append((str(path), str(err)))
            continue
        for note in decoded.notes:
            say(f"note: {path}: {note}")
        result = {"file": str(path), **decision.to_dict(), "model": classifier.model_info()}
        if as_json:
            click.echo(json.dumps(result))
        elif writer:
            writer.writerow(_csv_row(str(path), result))
        else:
            click.echo(_table_row(str(path), result))
    for name, reason in failures:
        click.echo(f"error: {name}: {reason}", err=True)
    if failures:
        sys.exit(EXIT_UNREADABLE)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The manifest as JSON.")
def info(as_json: bool) -> None:
    """The shipped models: file, size, threshold and test-split figures."""
    try:
        manifest = read_manifest()
    except ModelError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(f"classes {', '.join(manifest['class_names'])}; input {manifest['input_shape']}; "
               f"preprocessing {manifest['preprocessing']}; default {manifest['default_arch']}")
    click.echo(f"{'model':<28} {'MB':>6} {'T':>6} {'test acc':>8} {'agree':>6}  file")
    for key, entry in manifest["models"].items():
        figures = entry.get("verification", entry.get("metrics", {})).get("test", {})
        agreement = figures.get("agreement")
        click.echo(f"{key:<28} {entry['bytes'] / 1e6:6.1f} {entry['threshold']:6.3f} "
                   f"{figures.get('accuracy', float('nan')):8.3f} "
                   f"{'' if agreement is None else f'{agreement:6.3f}':>6}  {entry['file']}")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The app has no authentication: keep it on loopback "
                   "unless the network is trusted.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--model", "model_name", default="int8", show_default=True,
              help="As for classify: int8 | float16 | float32, a manifest key or a model file.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Interpreter threads per worker.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Classifiers answering requests in parallel (one interpreter each).")
@click.option("--max-upload-mb", type=click.IntRange(1, 1024), default=10, show_default=True,
              help="Largest accepted upload in MiB; larger ones get 413.")
def serve(host: str, port: int, model_name: str, threads: int, workers: int,
          max_upload_mb: int) -> None:
    """Serve the upload page and the JSON API (POST /predict, /docs) with uvicorn.

    Exits 1 when the [serve] extra is not installed or the model cannot be loaded.
    """
    try:
        import python_multipart  # noqa: F401  (FastAPI parses uploads with it)
        import uvicorn

        from edge_infer.server import create_app
    except ImportError as err:
        click.echo(f"error: the web app needs fastapi, uvicorn and python-multipart "
                   f"({err.name} is missing): pip install \".[serve]\"", err=True)
        sys.exit(EXIT_MODEL)
    try:
        app = create_app(model_name, threads=threads, workers=workers,
                         max_upload_bytes=max_upload_mb * 2**20)
    except (ModelError, InterpreterMissing, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)
    if host not in LOOPBACK_HOSTS:
        click.echo(f"note: listening on {host}: anyone who can reach it can use it "
                   "(no authentication)", err=True)
    uvicorn.run(app, host=host, port=port)
