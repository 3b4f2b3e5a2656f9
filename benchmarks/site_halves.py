"""Do site profiles keep their promise? A new hospital simulated by halves of its cases.

For BrEaST-Lesions_USG and BUS-BRA's test patients, with the shipped int8 model: the cases are
split in two halves (by case, stratified by class), 20 random splits, both ways round. A site
profile is fitted on one half with `edge-infer calibrate`'s own functions (temperature, the
conservative threshold, the site's input-check level) and tested on the other half, beside the
shipped temperature and threshold and beside the plain rule (the highest threshold catching
95 % of the fitting half, what profiles did before). Reported per set: the held-out malignant
sensitivity (mean, and the share of runs at >= 0.90), the specificity it costs, and the share
of held-out scans drawing the domain warning with the model's level and with the profile's.

This is the one place where BrEaST is used for fitting, and a fit never sees the half it is
tested on.

    python -m busi site-halves   (writes benchmarks/reports/site_halves.{json,md})
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from benchmarks.machine import command_line
from edge_infer.calibration import apply_temperature, fit_calibration
from edge_infer.classifier import Classifier
from edge_infer.inputs import labelled_csv
from edge_infer.rates import malignant_called, malignant_recall_specificity
from edge_infer.site_profile import fit_site_profile, site_input_check
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX
from edge_infer.splits import bus_bra_split_files
from train.datasets import LABELS_FILENAME, resolve_bus_bra_dir, resolve_external_dir

REPORTS = Path(__file__).resolve().parent / "reports"
SPLITS = 20
SEED = 0
RESAMPLES = 20  # the profile's own bootstrap figures; not used by its threshold
TARGET_MEAN, TARGET_FLOOR, TARGET_SHARE = 0.92, 0.90, 0.80


def halves_by_case(cases: list[str], labels: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the images, split by case and stratified by class (a case's
    class: its first image's): each class's cases shuffled, the first half to A."""
    case_label: dict[str, int] = {}
    for case, label in zip(cases, labels):
        case_label.setdefault(case, int(label))
    half_a: set[str] = set()
    for label in range(len(CLASS_NAMES)):
        ids = sorted(case for case, y in case_label.items() if y == label)
        rng.shuffle(ids)
        half_a.update(ids[:len(ids) // 2])
    in_a = np.array([case in half_a for case in cases])
    return np.flatnonzero(in_a), np.flatnonzero(~in_a)


def hospital_sets() -> dict[str, list[tuple[Path, str, str]]]:
    """(file, label, case) of BrEaST and of BUS-BRA's test patients."""
    breast = resolve_external_dir()
    with open(breast / LABELS_FILENAME, newline="", encoding="utf-8-sig") as handle:
        case_of = {row["file"]: row["case_id"] for row in csv.DictReader(handle)}
    found = labelled_csv(breast / LABELS_FILENAME)
    bus_bra = resolve_bus_bra_dir()
    return {
        "BrEaST": [(path, label, case_of[path.relative_to(breast).as_posix()])
                   for path, label in found.items],
        "BUS-BRA test": [(bus_bra / row.file, row.label, str(row.group))
                         for row in bus_bra_split_files("test")],
    }


def _sens_spec(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    return malignant_recall_specificity(labels, malignant_called(probs, threshold))


def one_run(classifier: Classifier, raw: np.ndarray, distances: np.ndarray, labels: np.ndarray,
            fit: np.ndarray, test: np.ndarray) -> dict:
    """Fit a profile on `fit`, measure shipped, plain and profile rules on `test`."""
    detector = classifier.input_check
    check = site_input_check(distances[fit], detector)
    profile = fit_site_profile(raw[fit], labels[fit], classifier.model_info,
                               {"kind": "simulation"}, n_resamples=RESAMPLES,
                               input_check=check)
    plain = fit_calibration(raw[fit], labels[fit])
    shipped = classifier.calibration
    rules = {"shipped": (shipped.temperature, shipped.threshold),
             "plain": (plain.temperature, plain.threshold),
             "profile": (profile["temperature"], profile["threshold"])}
    held = {}
    for name, (temperature, threshold) in rules.items():
        sensitivity, specificity = _sens_spec(labels[test],
                                              apply_temperature(raw[test], temperature),
                                              threshold)
        held[name] = {"sensitivity": sensitivity, "specificity": specificity}
    below_refuse = distances[test] <= detector.refuse_threshold
    warned = {"model": float(((distances[test] > detector.threshold) & below_refuse).mean()),
              "profile": float(((distances[test] > check["warning_threshold"])
                                & below_refuse).mean())}
    return {"held_out": held, "warned": warned, "weak": profile["promise"]["weak"],
            "malignant_fit": int((labels[fit] == MALIGNANT_INDEX).sum()),
            "malignant_test": int((labels[test] == MALIGNANT_INDEX).sum())}


def summarise(runs: list[dict]) -> dict:
    """Means over runs, and the share of runs whose held-out sensitivity reaches TARGET_FLOOR."""
    summary = {}
    for rule in ("shipped", "plain", "profile"):
        sens = np.array([run["held_out"][rule]["sensitivity"] for run in runs])
        spec = np.array([run["held_out"][rule]["specificity"] for run in runs])
        summary[rule] = {"sensitivity_mean": float(sens.mean()),
                         "sensitivity_min": float(sens.min()),
                         "share_at_floor": float((sens >= TARGET_FLOOR).mean()),
                         "specificity_mean": float(np.nanmean(spec))}
    summary["warned"] = {who: float(np.mean([run["warned"][who] for run in runs]))
                         for who in ("model", "profile")}
    summary["weak_share"] = float(np.mean([run["weak"] for run in runs]))
    summary["malignant_per_half"] = float(np.mean([run["malignant_fit"] for run in runs]))
    profile = summary["profile"]
    summary["target_met"] = bool(profile["sensitivity_mean"] >= TARGET_MEAN
                                 and profile["share_at_floor"] >= TARGET_SHARE)
    return summary


def simulate(classifier: Classifier, items: list[tuple[Path, str, str]], name: str) -> dict:
    """SPLITS random halvings of one hospital's cases, both ways round."""
    outputs = [classifier.raw_output(path)
               for path, _, _ in tqdm(items, desc=name, leave=False, file=sys.stderr)]
    raw = np.stack([probs for probs, _ in outputs])
    distances = np.array([distance for _, distance in outputs], dtype=np.float64)
    labels = np.array([CLASS_NAMES.index(label) for _, label, _ in items])
    cases = [case for _, _, case in items]
    rng = np.random.default_rng(SEED)
    runs = []
    for _ in range(SPLITS):
        a, b = halves_by_case(cases, labels, rng)
        runs += [one_run(classifier, raw, distances, labels, a, b),
                 one_run(classifier, raw, distances, labels, b, a)]
    return {"images": len(items), "cases": len(set(cases)),
            "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(CLASS_NAMES)},
            "summary": summarise(runs), "runs": runs}


def markdown(results: dict) -> str:
    """The simulation for people."""
    lines = ["# Site profiles on held-out halves of a new hospital", "",
             f"{results['created']} · `{results['command']}` · model "
             f"{results['model']['key']} (sha256 {results['model']['sha256'][:12]})", "",
             f"{SPLITS} random splits of each hospital's cases in two halves (by case, "
             "stratified by class), both ways round: a profile fitted on one half "
             "(`edge-infer calibrate`'s functions), tested on the other. Targets for the "
             f"profile: mean held-out sensitivity ≥ {TARGET_MEAN} and ≥ {TARGET_FLOOR} in ≥ "
             f"{TARGET_SHARE:.0%} of runs. 'plain' is the rule profiles used before (the "
             "highest threshold catching 95 % of the fitting half).", "",
             "| hospital | malignant per half | rule | held-out sensitivity: mean (min) | "
             f"runs ≥ {TARGET_FLOOR} | specificity | target |", "|---|---|---|---|---|---|---|"]
    for name, block in results["sets"].items():
        summary = block["summary"]
        for rule in ("shipped", "plain", "profile"):
            figures = summary[rule]
            verdict = ("**met**" if summary["target_met"] else "**not met**") \
                if rule == "profile" else ""
            lines.append(f"| {name} | {summary['malignant_per_half']:.1f} | {rule} | "
                         f"{figures['sensitivity_mean']:.3f} ({figures['sensitivity_min']:.3f})"
                         f" | {figures['share_at_floor']:.0%} | "
                         f"{figures['specificity_mean']:.3f} | {verdict} |")
    lines += ["", "Domain warnings on the held-out half (breast scans labelled with the "
              "warning), with the model's level and with the profile's:", ""]
    for name, block in results["sets"].items():
        summary = block["summary"]
        lines.append(f"- {name}: {summary['warned']['model']:.1%} → "
                     f"{summary['warned']['profile']:.1%}; the profile's promise was weak "
                     f"(too few malignant cases for an exact bound) in "
                     f"{summary['weak_share']:.0%} of runs.")
    return "\n".join(lines) + "\n"


@click.command(help=__doc__)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REPORTS,
              show_default=True, help="Writes site_halves.json and site_halves.md here.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
def main(out: Path, threads: int) -> None:
    classifier = Classifier("int8", threads=threads, quiet=True)
    if classifier.input_check is None:
        raise click.ClickException(f"{classifier.entry.key} has no input check: run "
                                   "python -m busi ood-fit")
    results = {"model": classifier.model_info, "splits": SPLITS, "seed": SEED,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": command_line("site-halves"),
               "sets": {name: simulate(classifier, items, name)
                        for name, items in hospital_sets().items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "site_halves.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "site_halves.md").write_text(markdown(results))
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
