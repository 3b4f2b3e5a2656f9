"""`edge-infer`: classify breast-ultrasound images with the shipped TFLite model, evaluate it
on a labelled set of images, or fit a site profile from them.

Each command's exit codes are in its --help (the *_EXIT_CODES epilogs below).
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from edge_infer import __version__
from edge_infer.cam import png_bytes
from edge_infer.classifier import Classifier, Result
from edge_infer.decision import MODES, requested_mode
from edge_infer.inputs import expand_inputs, labelled_csv, labelled_folder
from edge_infer.manifest import ModelError, models_dir, read_manifest
from edge_infer.ood import POLICIES, ood_message
from edge_infer.preprocess import ImageError
from edge_infer.site_profile import (
    DEFAULT_MODE,
    fit_site_profile,
    profile_summary_lines,
    site_input_check,
    write_profile,
)
from edge_infer.spec import CLASS_NAMES
from edge_infer.tflite_model import InterpreterMissing
from edge_infer.web.defaults import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
)

EXIT_MODEL = 1
EXIT_UNREADABLE = 3
EXIT_UNKNOWN_LABEL = 4
EXIT_REFUSED = 5
EXIT_CANNOT_LISTEN = 6
PROGRESS_MIN_IMAGES = 10
FLAGS_WIDTH = 31  # the longest flags: forced,uncertain,domain-warning
HEATMAP_SUFFIX = ".png"
CLASSIFY_EXIT_CODES = (
    "Exit codes: 0 every input classified; 1 the model or the --site profile cannot be loaded, "
    "the model gives no heat-map, or the heat-map cannot be written; 2 usage error (also "
    "--heatmap with more than one image, or a name not ending in .png); 3 some inputs could "
    "not be read (each named on stderr; the others are still classified); 5 some images were "
    "refused as not breast ultrasound (each named on stderr, no label and no heat-map given; "
    "the others are still classified; 3 takes precedence; --ood warn labels them and exits 0). "
    "A breast scan unlike the training hospitals' is labelled with a domain warning on stderr "
    "and domain_warning true: exit 0.")
EVALUATE_EXIT_CODES = (
    "Exit codes: 0 every image evaluated; 1 the model or the --site profile cannot be loaded, "
    "scikit-learn (matplotlib with --plots) is missing, or --json / --plots cannot be written; "
    "2 usage error; 3 some images could not be read (each named on stderr; the others are "
    "still evaluated); 4 some labels are not class names (each named on stderr; the other "
    "images are still evaluated; takes precedence over 3).")
CALIBRATE_EXIT_CODES = (
    "Exit codes: 0 profile written (also when its promise is weak: said on stderr); 1 the "
    "model cannot be loaded, the images read are too few "
    "(fewer than 5 malignant or 5 normal + benign; no profile written), or the profile cannot "
    "be written; 2 usage error, also no malignant image among the labels; 3 some images could "
    "not be read (each named on stderr; the profile is still written from the others); 4 some "
    "labels are not class names (likewise; takes precedence over 3).")
INFO_EXIT_CODES = "Exit codes: 0 manifest listed; 1 the manifest cannot be read."
SERVE_EXIT_CODES = (
    "Exit codes: 0 stopped (Ctrl-C); 1 the [serve] extra is not installed or the model or the "
    "--site profile cannot be loaded; 2 usage error; 6 the address cannot be listened on (the "
    "port is in use, or the host is not this machine's).")
DEFAULT_THREADS = min(4, os.cpu_count() or 1)


class DefaultToClassify(click.Group):
    """A group whose first argument, when it is not a subcommand, is an image to classify."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                     "--version"):
            args = ["classify", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToClassify, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: each command lists its own in its --help.")
@click.version_option(__version__, "--version", prog_name="edge-infer")
def main() -> None:
    """Classify breast-ultrasound images as normal / benign / malignant on a CPU.

    \b
      edge-infer IMAGE [IMAGE|DIR ...]     classify (the default command)
      edge-infer evaluate DIR|--labels CSV a model's figures on labelled images
      edge-infer calibrate DIR|--labels CSV --out site.json   a site profile from them
      edge-infer info                      the shipped models and their validated figures
      edge-infer serve                     the web app and JSON API (pip install ".[serve]")

    A research tool, not a diagnosis. Run `edge-infer COMMAND --help` (e.g. classify) for its
    options and exit codes.
    """


def load_classifier(model: str, threads: int, site: Path | None = None,
                    quiet: bool = False) -> Classifier:
    """The Classifier (with a site profile if given; `quiet`: without the interpreter's own log
    lines), or a one-line error and exit code 1."""
    try:
        return Classifier(model, threads=threads, site=site, quiet=quiet)
    except (ModelError, InterpreterMissing, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)


def _finite_threshold(ctx: click.Context, param: click.Parameter,
                      value: float | None) -> float | None:
    """Refuse 'nan', which click's FloatRange lets through (NaN fails no comparison)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a threshold; give a number in [0, 1]")
    return value


def _check_mode(mode: str | None, threshold: float | None) -> None:
    """Refuse a threshold with argmax as a usage error (exit 2), before any model is loaded."""
    try:
        requested_mode(mode, threshold)
    except ValueError:
        raise click.UsageError("--threshold applies to --mode high-sensitivity only") from None


def _note_printer(quiet: bool) -> Callable[[str], None]:
    """Print a note on stderr (through tqdm, so a progress bar stays intact) unless quiet."""
    def say(text: str) -> None:
        if not quiet:
            tqdm.write(text, file=sys.stderr)
    return say


model_option = click.option(
    "--model", "model_name", default="int8", show_default=True,
    help="int8 | float16 | float32, a manifest key such as efficientnet-lite0/int8, or a model "
         "file listed in the manifest.")
mode_option = click.option(
    "--mode", type=click.Choice(MODES), default=None,
    help="argmax (default; with --site, the profile's mode), or high-sensitivity: call "
         "malignant whenever prob_malignant >= threshold.")
threshold_option = click.option(
    "--threshold", type=click.FloatRange(0.0, 1.0), default=None, callback=_finite_threshold,
    help="High-sensitivity threshold (implies that mode); default: the model's threshold "
         "validated for malignant recall >= 0.95.")
threads_option = click.option("--threads", type=click.IntRange(1), default=DEFAULT_THREADS,
                              show_default=True, help="Interpreter threads.")
site_option = click.option(
    "--site", "site", metavar="PROFILE.json", type=click.Path(path_type=Path),
    help="A site profile from `edge-infer calibrate`: its temperature, threshold, mode (when "
         "--mode is not given) and input-check level instead of the shipped ones (refused if "
         "fitted for another model file).")
quiet_option = click.option("--quiet", "-q", is_flag=True,
                            help="No notes or progress bar; errors only.")
def labelled_images(command: Callable) -> Callable:
    """The labelled images a command reads: a folder per class, or --labels CSV."""
    command = click.option(
        "--labels", "labels_file", metavar="CSV",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A CSV with file,label columns (files relative to the CSV), instead of DIR.")(command)
    return click.argument("path", required=False, metavar="[DIR]",
                          type=click.Path(exists=True, file_okay=False, path_type=Path))(command)


def _png_name(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse a heat-map name that does not end in .png: the file written is PNG data."""
    if value is not None and value.suffix.lower() != HEATMAP_SUFFIX:
        raise click.BadParameter(f"{value}: the heat-map is written as PNG; give a name ending "
                                 f"in {HEATMAP_SUFFIX}")
    return value


heatmap_option = click.option(
    "--heatmap", "heatmap", metavar="OUT.png", type=click.Path(dir_okay=False, path_type=Path),
    callback=_png_name,
    help="Write the image (one only) with the model's class activation map overlaid: where "
         "the evidence for the predicted class lies (edge_infer/cam.py). Not a lesion outline. "
         "None for an image refused as not breast ultrasound.")
ood_option = click.option(
    "--ood", "ood_policy", type=click.Choice(POLICIES), default="refuse", show_default=True,
    help="An image that is not a breast ultrasound (edge_infer/ood.py): refuse gives it no "
         "label (exit 5), warn labels it anyway; both say so on stderr. A breast scan unlike "
         "the training hospitals' is labelled either way, with a domain warning.")
heatmap_class_option = click.option(
    "--heatmap-class", type=click.Choice(CLASS_NAMES), default=None,
    help="The class whose map --heatmap shows (default: the prediction).")


CSV_FIELDS: tuple[str, ...] = (
    "file", "prediction", "argmax_prediction", *(f"prob_{c}" for c in CLASS_NAMES),
    "forced_malignant", "uncertain", "threshold", "margin", "temperature", "profile",
    "in_distribution", "domain_warning", "ood_score", "error")


def _table_row(name: str, result: Result | None, error: str | None) -> str:
    if result is None:
        dashes = " ".join(f"{'-':>9}" for _ in CLASS_NAMES)
        return f"{'error':<10} {dashes}  {'-':<{FLAGS_WIDTH}} {name}"
    probs = " ".join(f"{result.probs[c]:>9.3f}" for c in CLASS_NAMES)
    flags = ",".join(f for f in ("forced" if result.forced_malignant else "",
                                 "uncertain" if result.uncertain else "",
                                 "domain-warning" if result.domain_warning else
                                 "not-ultrasound" if result.in_distribution is False else "")
                     if f)
    return f"{result.prediction or 'refused':<10} {probs}  {flags or '-':<{FLAGS_WIDTH}} {name}"


def _csv_row(name: str, result: Result | None, error: str | None) -> list:
    if result is None:
        return [name, *([""] * (len(CSV_FIELDS) - 2)), error]
    return [name, result.prediction, result.argmax_prediction,
            *(f"{result.probs[c]:.6f}" for c in CLASS_NAMES),
            result.forced_malignant, result.uncertain, result.threshold,
            result.margin, result.temperature, result.profile,
            result.in_distribution, result.domain_warning, result.ood_score, ""]


def _row_writer(style: str) -> Callable[[str, Result | None, str | None], None]:
    """A function printing one output row per input (a result, or the error that stopped it),
    after printing the header of the chosen style: table, csv or json (JSON lines)."""
    if style == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        return lambda name, result, error: writer.writerow(_csv_row(name, result, error))
    if style == "json":
        return lambda name, result, error: click.echo(json.dumps(
            {"file": name, **result.to_dict()} if result else {"file": name, "error": error}))
    click.echo(f"{'prediction':<10} {' '.join(f'{c:>9}' for c in CLASS_NAMES)}  "
               f"{'flags':<{FLAGS_WIDTH}} file")
    return lambda name, result, error: click.echo(_table_row(name, result, error))


@main.command(epilog=CLASSIFY_EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE|DIR...")
@model_option
@mode_option
@threshold_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON lines).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@site_option
@threads_option
@quiet_option
@heatmap_option
@heatmap_class_option
@ood_option
def classify(inputs: tuple[str, ...], model_name: str, mode: str | None,
             threshold: float | None, as_json: bool, as_csv: bool, site: Path | None,
             threads: int, quiet: bool, heatmap: Path | None,
             heatmap_class: str | None, ood_policy: str) -> None:
    """Classify images and folders (searched recursively; BUSI *_mask files skipped)."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    _check_mode(mode, threshold)
    found = expand_inputs(list(inputs))
    if heatmap and len(found.items) != 1:
        raise click.UsageError("--heatmap writes one image's heat-map: give exactly one image")
    classifier = load_classifier(model_name, threads, site, quiet)
    if heatmap and not classifier.has_heatmap:
        click.echo(f"error: {classifier.entry.key} gives no heat-map (no feature-map output or "
                   "head in its manifest entry): convert it again with python -m busi convert",
                   err=True)
        sys.exit(EXIT_MODEL)
    say = _note_printer(quiet)
    if site or classifier.calibration.temperature is None:
        say(f"note: {calibration_note(classifier, mode, threshold)}")
    if classifier.input_check is None:
        say(f"note: {classifier.entry.key} has no fitted check for images that are not breast "
            "ultrasound: in_distribution is null")
    for note in found.notes:
        say(f"note: {note}")
    emit = _row_writer("json" if as_json else "csv" if as_csv else "table")
    failures, refused = [], []
    progress = tqdm(found.items, unit="img", file=sys.stderr,
                    disable=quiet or len(found.items) < PROGRESS_MIN_IMAGES)
    for name, path, reason in progress:
        try:
            if path is None:
                raise ImageError(reason)
            result = classifier.predict(path, mode, threshold, ood_policy,
                                        heatmap=(heatmap_class or True) if heatmap else False)
        except ImageError as err:
            failures.append((name, str(err)))
            emit(name, None, str(err))
            continue
        for note in result.notes:
            say(f"note: {path}: {note}")
        if result.in_distribution is False:
            tqdm.write(f"{'refused' if result.refused else 'warning'}: "
                       f"{ood_message(str(path), result.to_dict())}", file=sys.stderr)
            refused += [path] if result.refused else []
        emit(str(path), result, None)
        if heatmap and result.refused:
            say(f"note: no heat-map written for {path}: refused as not breast ultrasound "
                "(--ood warn labels it and draws one)")
        elif result.heatmap is not None:
            _write_heatmap(result.heatmap, heatmap, heatmap_class or result.prediction, say)
    for name, reason in failures:
        click.echo(f"error: {name}: {reason}", err=True)
    if failures or refused:
        sys.exit(EXIT_UNREADABLE if failures else EXIT_REFUSED)


def _write_heatmap(overlay: Image.Image, out: Path, label: str,
                   say: Callable[[str], None]) -> None:
    """Save the heat-map PNG, or a one-line error and exit code 1."""
    try:
        out.write_bytes(png_bytes(overlay))
    except OSError as err:
        click.echo(f"error: cannot write {out}: {err.strerror or err}", err=True)
        sys.exit(EXIT_MODEL)
    say(f"note: heat-map of class {label} written to {out}")


def calibration_note(classifier: Classifier, mode: str | None,
                     threshold: float | None) -> str:
    """How this run's probabilities are calibrated and decided, in one line."""
    calibration = classifier.calibration
    if calibration.temperature is None:
        return (f"{classifier.entry.key} has no fitted temperature: its probabilities are "
                "uncalibrated (python -m busi calibrate fits one)")
    mode, threshold = classifier.decision_rule(mode, threshold)
    rule = "argmax" if threshold is None else f"high-sensitivity at {threshold:.3f}"
    return (f"probabilities calibrated with temperature {calibration.temperature:.3f}; deciding "
            f"by {rule} (profile: {calibration.profile})")


@main.command(epilog=INFO_EXIT_CODES)
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
    click.echo(f"{'model':<28} {'MB':>6} {'T':>6} {'temp.':>6} {'test acc':>8} {'agree':>6}  "
               "file")
    for key, entry in manifest["models"].items():
        figures = entry.get("verification", entry.get("metrics", {})).get("test", {})
        agreement = figures.get("agreement")
        temperature = entry.get("temperature")
        click.echo(f"{key:<28} {entry['bytes'] / 1e6:6.1f} {entry['threshold']:6.3f} "
                   f"{'—' if temperature is None else f'{temperature:.3f}':>6} "
                   f"{figures.get('accuracy', float('nan')):8.3f} "
                   f"{'' if agreement is None else f'{agreement:6.3f}':>6}  {entry['file']}"
                   + ("  (not run by edge-infer: use a TFLite variant)"
                      if entry.get("format") != "tflite" else
                      "" if (models_dir() / entry["file"]).is_file() else "  (not installed)"))
    for key, entry in manifest["models"].items():
        missed = entry.get("verification", {}).get("targets_missed")
        if missed:
            click.echo(f"note: {key} was shipped although it misses {', '.join(missed)} "
                       "(python -m busi convert --accept-missed-targets)")


def _load_evaluation(plots: bool) -> ModuleType:
    """edge_infer.evaluation (and matplotlib for plots), or one line naming the [evaluate] extra and
    exit code 1: scikit-learn and matplotlib are not part of the light runtime."""
    try:
        import sklearn  # noqa: F401

        from edge_infer import evaluation
        if plots:
            import matplotlib  # noqa: F401
    except ImportError as err:
        needed = "scikit-learn and matplotlib" if plots else "scikit-learn"
        click.echo(f"error: edge-infer evaluate needs {needed} ({err.name} is missing): "
                   f"pip install \".[evaluate]\"", err=True)
        sys.exit(EXIT_MODEL)
    return evaluation


@main.command(epilog=EVALUATE_EXIT_CODES)
@labelled_images
@model_option
@mode_option
@threshold_option
@site_option
@threads_option
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every figure, per-image prediction and error to this JSON file.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write confusion_matrix.png, roc_curve.png and reliability.png here.")
@click.option("--resamples", type=click.IntRange(10), default=1000, show_default=True,
              help="Bootstrap resamples for the 95 % intervals (seed 0).")
@quiet_option
def evaluate(path: Path | None, labels_file: Path | None, model_name: str, mode: str | None,
             threshold: float | None, site: Path | None, threads: int, json_file: Path | None,
             plots_dir: Path | None, resamples: int, quiet: bool) -> None:
    """A model's figures on labelled images: DIR holds a folder per class (normal/ benign/
    malignant/, any subset; BUSI *_mask files skipped), or --labels CSV lists file,label.

    Prints accuracy, balanced accuracy, per-class precision / recall, the confusion matrix,
    malignant sensitivity and specificity, and the benign-vs-malignant ROC-AUC, with 95 %
    bootstrap intervals. Needs the [evaluate] extra (scikit-learn; matplotlib for --plots).
    """
    if (path is None) == (labels_file is None):
        raise click.UsageError("give a folder of class folders (DIR) or --labels CSV, not both")
    _check_mode(mode, threshold)
    evaluation = _load_evaluation(plots_dir is not None)
    found = labelled_csv(labels_file) if labels_file else labelled_folder(path)
    if not (found.items or found.unreadable or found.unlabelled):
        raise click.UsageError(
            f"{labels_file} lists no image (only BUSI masks)" if labels_file else
            f"{path} holds no class folder ({', '.join(CLASS_NAMES)}); for a CSV of files "
            "and labels use --labels")
    classifier = load_classifier(model_name, threads, site, quiet)
    threshold_source = None
    given = threshold
    mode, threshold = classifier.decision_rule(mode, threshold)
    if mode == "high-sensitivity":
        threshold_source = ("given" if given is not None else
                            "the site profile's threshold" if site else
                            "the model's validated threshold")
    say = _note_printer(quiet)
    for note in found.notes:
        say(f"note: {note}")
    predictions = evaluation.classify_labelled(
        classifier, found.items, mode, threshold,
        progress=not quiet and len(found.items) >= PROGRESS_MIN_IMAGES, say=say)
    errors = [{"input": name, "reason": reason, "kind": kind}
              for kind, failed in (("unreadable", found.unreadable + predictions.failures),
                                   ("unknown_label", found.unlabelled))
              for name, reason in failed]
    for error in errors:
        click.echo(f"error: {error['input']}: {error['reason']}", err=True)
    code = (EXIT_UNKNOWN_LABEL if found.unlabelled else EXIT_UNREADABLE) if errors else 0
    if not predictions.files:
        click.echo("error: no image could be evaluated", err=True)
        sys.exit(code or EXIT_UNREADABLE)
    source = ({"kind": "labels", "path": str(labels_file)} if labels_file
              else {"kind": "folder", "path": str(path)})
    report = evaluation.build_report(classifier, predictions, mode, threshold, threshold_source,
                                     source, errors, found.notes, resamples)
    try:
        if plots_dir is not None:
            from edge_infer.plots import make_evaluation_plots

            report["plots"] = {name: str(plots_dir / file) for name, file
                               in make_evaluation_plots(report, plots_dir).items()}
        click.echo("\n".join(evaluation.summary_lines(report)))
        if json_file is not None:
            json_file.write_text(json.dumps(evaluation.json_ready(report), indent=1,
                                            allow_nan=False)
                                 + "\n")
    except OSError as err:
        click.echo(f"error: cannot write {err.filename}: {err.strerror or err}", err=True)
        sys.exit(EXIT_MODEL)
    if code:
        sys.exit(code)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _cannot_listen(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (in use, not this machine's address), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        return str(err.strerror or err)
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return str(err.strerror or err)
    return None


@main.command(epilog=SERVE_EXIT_CODES)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Beyond loopback, set --token (and put TLS in front: "
                   "docs/web_security.md).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="TCP port to listen on.")
@model_option
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Interpreter threads per worker.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Classifiers answering requests in parallel (one interpreter each); also "
                   "how many images are decoded at once.")
@click.option("--max-upload-mb", type=click.IntRange(1, 1024), default=10, show_default=True,
              help="Largest accepted upload in MiB; larger ones get 413.")
@site_option
@click.option("--token", envvar="EDGE_INFER_TOKEN", show_envvar=True, default=None,
              metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on the API (at least 16 characters; "
                   "the page asks for it once). Prefer the environment variable: a command "
                   "line is visible to other users of the machine.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name browsers may use to reach the app without a token, besides IP "
                   "addresses and this machine's name (repeatable).")
@click.option("--max-connections", type=click.IntRange(4, 900),
              default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Open connections at most; at the cap the oldest idle or still-uploading "
                   "one is closed for a new one.")
@click.option("--header-timeout", "header_timeout_s", type=click.FloatRange(0.5, 300),
              default=DEFAULT_HEADER_TIMEOUT_S, show_default=True,
              help="Seconds a connection has to send a request's headers (then 408).")
@click.option("--body-timeout", "body_timeout_s", type=click.FloatRange(1, 3600),
              default=DEFAULT_BODY_TIMEOUT_S, show_default=True,
              help="Seconds a request has to send its whole body (then 408).")
def serve(host: str, port: int, model_name: str, threads: int, workers: int,
          max_upload_mb: int, site: Path | None, token: str | None,
          allowed_hosts: tuple[str, ...], max_connections: int, header_timeout_s: float,
          body_timeout_s: float) -> None:
    """Serve the upload page and the JSON API (POST /predict, /docs) with uvicorn."""
    try:
        import python_multipart  # noqa: F401  (FastAPI parses uploads with it)
        import uvicorn  # noqa: F401

        from edge_infer.web.app import create_app
        from edge_infer.web.serving import serve_app
    except ImportError as err:
        click.echo(f"error: the web app needs fastapi, fastapi-offline, uvicorn and "
                   f"python-multipart ({err.name} is missing): pip install \".[serve]\"",
                   err=True)
        sys.exit(EXIT_MODEL)
    try:
        app = create_app(model_name, threads=threads, workers=workers,
                         max_upload_bytes=max_upload_mb * 2**20, site=site, token=token,
                         allowed_hosts=allowed_hosts, body_timeout_s=body_timeout_s)
    except (ModelError, InterpreterMissing, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)
    problem = _cannot_listen(host, port)
    if problem:
        click.echo(f"error: cannot listen on {host}:{port}: {problem}", err=True)
        sys.exit(EXIT_CANNOT_LISTEN)
    if host not in LOOPBACK_HOSTS and not token:
        click.echo(f"warning: listening on {host} without a token: anyone who can reach it "
                   "can use it; set EDGE_INFER_TOKEN (see docs/web_security.md)", err=True)
    serve_app(app, host, port, max_connections=max_connections,
              header_timeout_s=header_timeout_s)


@main.command(epilog=CALIBRATE_EXIT_CODES)
@labelled_images
@click.option("--out", "out", required=True, metavar="PROFILE.json",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the site profile.")
@model_option
@threads_option
@click.option("--description", default="", metavar="TEXT",
              help="Where the images come from (clinic, scanner, period), kept in the profile.")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True,
              help="The mode the profile is made for: what --site decides by when --mode is "
                   "not given.")
@click.option("--resamples", type=click.IntRange(10), default=1000, show_default=True,
              help="Bootstrap resamples for the sensitivity interval and refits (seed 0).")
@click.option("--quiet", "-q", is_flag=True,
              help="No notes or progress bar (warnings and errors are still shown).")
def calibrate(path: Path | None, labels_file: Path | None, out: Path, model_name: str,
              threads: int, description: str, mode: str, resamples: int, quiet: bool) -> None:
    """Fit a site profile from a clinic's own labelled images (as few as ~50; at least 59
    malignant for an exact promise; refused below 5 malignant or 5 normal + benign): DIR holds a
    folder per class, or --labels CSV lists file,label, as for `evaluate`.

    \b
    The profile holds a temperature for the model's probabilities (fitted on these images by
    minimising the negative log-likelihood) and the high-sensitivity threshold: the highest one
    whose 95 % lower confidence bound of sensitivity is still >= 0.95 (exact with >= 59
    malignant images; with fewer, a prediction bound, and the promise is called weak), with a
    bootstrap interval of that sensitivity, the sensitivity refits reach on images they did
    not see, and warnings when the promise is weak or the temperature sits at a bound of its
    search range. It states its mode (high-sensitivity by default) and these scans' level of
    the input check's feature distance, so they stop drawing the domain warning. It is tied to
    the model file (sha256). Use it with `edge-infer --site PROFILE.json IMAGE`, `edge-infer
    evaluate --site` and `edge-infer serve --site`. Works in the light runtime (numpy only).
    """
    if (path is None) == (labels_file is None):
        raise click.UsageError("give a folder of class folders (DIR) or --labels CSV, not both")
    found = labelled_csv(labels_file) if labels_file else labelled_folder(path)
    source_path = labels_file or path
    if not any(label == "malignant" for _, label in found.items):
        raise click.UsageError(
            f"{source_path} holds no malignant images: a threshold for malignant sensitivity "
            "cannot be fitted without them (a folder malignant/, or rows labelled malignant)")
    classifier = load_classifier(model_name, threads, quiet=quiet)
    say = _note_printer(quiet)
    for note in found.notes:
        say(f"note: {note}")
    raw, distances, labels, failures = [], [], [], []
    progress = tqdm(found.items, unit="img", file=sys.stderr,
                    disable=quiet or len(found.items) < PROGRESS_MIN_IMAGES)
    for image_path, label in progress:
        try:
            probs, distance = classifier.raw_output(image_path)
        except ImageError as err:
            failures.append((str(image_path), str(err)))
            continue
        raw.append(probs)
        distances.append(distance)
        labels.append(CLASS_NAMES.index(label))
    for name, reason in found.unreadable + failures + found.unlabelled:
        click.echo(f"error: {name}: {reason}", err=True)
    code = (EXIT_UNKNOWN_LABEL if found.unlabelled else
            EXIT_UNREADABLE if found.unreadable or failures else 0)
    source = {"kind": "labels" if labels_file else "folder", "path": str(source_path.resolve()),
              "description": description, "not_used": len(found.unreadable + failures
                                                          + found.unlabelled)}
    check = (None if classifier.input_check is None or not distances
             else site_input_check(np.array(distances), classifier.input_check))
    try:
        profile = fit_site_profile(np.array(raw).reshape(-1, len(CLASS_NAMES)),
                                   np.array(labels, dtype=np.int64), classifier.model_info,
                                   source, n_resamples=resamples, mode=mode, input_check=check)
    except ValueError as err:  # no malignant image read, or too few images (no profile)
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_MODEL)
    try:
        write_profile(profile, out)
    except OSError as err:
        click.echo(f"error: cannot write {out}: {err.strerror or err}", err=True)
        sys.exit(EXIT_MODEL)
    click.echo("\n".join(profile_summary_lines(profile, classifier.calibration, out)))
    for warning in profile["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if code:
        sys.exit(code)
