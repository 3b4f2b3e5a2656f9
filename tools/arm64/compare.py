"""Compare two `edge-infer --json` result files, a reference (x86-64) and a candidate (arm64):
the same images, the same model file, identical predictions, probabilities within a tolerance.

`python -m tools.arm64.compare REFERENCE CANDIDATE [--tolerance T]`
Exit codes: 0 the results agree; 1 they differ; 2 usage error or an unreadable result file.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from edge_infer.spec import CLASS_NAMES

# The int8 model's raw outputs come in steps of 1/256 (0.0039): 0.01 allows two rounding
# steps of a CPU-specific kernel, and no more.
DEFAULT_TOLERANCE = 0.01
# A difference printed as 0.01 may be 0.010000000000000009 in binary: not "over" 0.01.
FLOAT_SLACK = 1e-12
EXIT_DIFFER = 1
EXIT_UNREADABLE = 2


class ResultFileError(ValueError):
    """A result file that is not `edge-infer --json` output."""


@dataclass(frozen=True)
class ImageResult:
    """What one image's `edge-infer --json` line says that must match across machines."""

    file: str
    prediction: str
    argmax_prediction: str
    probs: tuple[float, ...]
    model_sha256: str


def _parse_line(line: str, where: str) -> ImageResult:
    try:
        record = json.loads(line)
        probs = tuple(float(record["probs"][name]) for name in CLASS_NAMES)
        return ImageResult(file=str(record["file"]), prediction=str(record["prediction"]),
                           argmax_prediction=str(record["argmax_prediction"]), probs=probs,
                           model_sha256=str(record["model"]["sha256"]))
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{where}: not JSON ({err.msg})") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ResultFileError(f"{where}: not an edge-infer --json result (missing or bad "
                              f"{err})") from None


def read_results(path: str | os.PathLike) -> dict[str, ImageResult]:
    """One file's results keyed by image path; refuses an empty file or a repeated image."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ResultFileError(f"cannot read {path}: {err}") from None
    results: dict[str, ImageResult] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        result = _parse_line(line, f"{path}:{number}")
        if result.file in results:
            raise ResultFileError(f"{path}:{number}: {result.file} appears twice")
        results[result.file] = result
    if not results:
        raise ResultFileError(f"{path} holds no results")
    return results


def check_tolerance(tolerance: float) -> float:
    """The tolerance, if it is a number in [0, 1)."""
    if not 0.0 <= tolerance < 1.0:  # also refuses NaN
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance}")
    return tolerance


@dataclass
class Comparison:
    """How a candidate's results differ from the reference's for the same images."""

    tolerance: float
    images: int = 0
    max_abs_diff: float = 0.0
    worst_image: str | None = None
    images_with_any_diff: int = 0
    prediction_mismatches: list[str] = field(default_factory=list)
    only_in_reference: list[str] = field(default_factory=list)
    only_in_candidate: list[str] = field(default_factory=list)
    reference_sha256: list[str] = field(default_factory=list)
    candidate_sha256: list[str] = field(default_factory=list)

    @property
    def same_model(self) -> bool:
        """Every result on both sides came from one and the same model file."""
        return len(set(self.reference_sha256) | set(self.candidate_sha256)) <= 1

    @property
    def identical_predictions(self) -> bool:
        return not self.prediction_mismatches

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= self.tolerance + FLOAT_SLACK

    @property
    def agrees(self) -> bool:
        return (self.images > 0 and self.same_model and self.identical_predictions
                and self.within_tolerance and not self.only_in_reference
                and not self.only_in_candidate)

    def problems(self) -> list[str]:
        """One line per reason the results do not agree (empty when they do)."""
        lines = []
        if not self.same_model:
            lines.append(f"different model files (sha256): reference {self.reference_sha256}, "
                         f"candidate {self.candidate_sha256}")
        lines += [f"prediction differs: {name}" for name in self.prediction_mismatches]
        lines += [f"only in the reference: {name}" for name in self.only_in_reference]
        lines += [f"only in the candidate: {name}" for name in self.only_in_candidate]
        if not self.within_tolerance:
            lines.append(f"max |dprob| {self.max_abs_diff:.6g} > tolerance {self.tolerance:g} "
                         f"({self.worst_image})")
        if self.images == 0:
            lines.append("no image in common")
        return lines

    def to_dict(self) -> dict:
        return {"images": self.images, "tolerance": self.tolerance,
                "agrees": self.agrees, "identical_predictions": self.identical_predictions,
                "max_abs_diff": self.max_abs_diff, "worst_image": self.worst_image,
                "images_with_any_diff": self.images_with_any_diff,
                "model_sha256": sorted({*self.reference_sha256, *self.candidate_sha256}),
                "problems": self.problems()}


def compare(reference: dict[str, ImageResult], candidate: dict[str, ImageResult],
            tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare the images both files hold; images only one holds are listed as problems."""
    result = Comparison(tolerance=check_tolerance(tolerance))
    result.only_in_reference = sorted(set(reference) - set(candidate))
    result.only_in_candidate = sorted(set(candidate) - set(reference))
    common = sorted(set(reference) & set(candidate))
    result.images = len(common)
    result.reference_sha256 = sorted({reference[name].model_sha256 for name in reference})
    result.candidate_sha256 = sorted({candidate[name].model_sha256 for name in candidate})
    for name in common:
        ours, theirs = reference[name], candidate[name]
        if (ours.prediction, ours.argmax_prediction) != (theirs.prediction,
                                                         theirs.argmax_prediction):
            result.prediction_mismatches.append(name)
        diffs = [abs(a - b) for a, b in zip(ours.probs, theirs.probs)]
        worst = math.inf if any(math.isnan(d) for d in diffs) else max(diffs)
        result.images_with_any_diff += worst > 0.0
        if worst > result.max_abs_diff:
            result.max_abs_diff, result.worst_image = worst, name
    return result


def compare_files(reference: str | os.PathLike, candidate: str | os.PathLike,
                  tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """`compare` on two result files (ResultFileError if one cannot be read)."""
    return compare(read_results(reference), read_results(candidate), tolerance)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Largest allowed |difference| of any class probability.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def main(reference: Path, candidate: Path, tolerance: float, as_json: bool) -> None:
    """Compare CANDIDATE's `edge-infer --json` results with REFERENCE's: exit 0 when they hold
    the same images, the same model, identical predictions and probabilities within
    --tolerance; exit 1 (each difference on stderr) otherwise; exit 2 on unreadable input."""
    try:
        comparison = compare_files(reference, candidate, check_tolerance(tolerance))
    except ResultFileError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_UNREADABLE)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--tolerance") from None
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2))
    else:
        click.echo(f"{comparison.images} images, identical predictions: "
                   f"{'yes' if comparison.identical_predictions else 'no'}, max |dprob| "
                   f"{comparison.max_abs_diff:.6g} (tolerance {comparison.tolerance:g})")
    for line in comparison.problems():
        click.echo(f"differs: {line}", err=True)
    if not comparison.agrees:
        sys.exit(EXIT_DIFFER)


if __name__ == "__main__":
    main()
