"""The out-of-distribution check, measured: does it flag images that are not breast ultrasound,
and leave breast ultrasound alone?

In-distribution: the BUSI test split. Out-of-distribution: the images scikit-image and
scikit-learn ship, synthetic ones, other modalities (CT, MR, colour ultrasound of another organ)
and colour Doppler frames made on BUSI test scans (benchmarks/ood_sets.py). Reported apart:
BUSI test images under heavy corruption (ultrasound underneath, so neither side), and the
share of two other hospitals' breast-ultrasound sets that gets refused or warned
(BrEaST-Lesions_USG, BUS-BRA): every refusal there is a false alarm at another site. Nothing
is fitted or chosen on any of these sets: the shipped check's parameters come from the training
split, its warning threshold from the validation split and its refuse boundary from leaving a
training site out (python -m busi ood-fit); the two comparison methods get their thresholds on
the validation split by the same rule.

The two tiers as shipped: the share of every set refused (not a breast ultrasound: no label)
and warned (a breast scan unlike the training hospitals': labelled with domain_warning), and
the time the whole check takes per image beside the model (colour, frame checks and the
feature distance).

\b
Methods, side by side, each score higher = less like the training data:
- shipped: what the runtime applies, max(feature / its threshold, colour / its threshold);
  flagged when > 1;
- feature: PPCA Mahalanobis distance of the unit-length pooled features alone;
- colour: the off-tint colour fraction alone;
- energy: -logsumexp of the logits (the head applied to the pooled features);
- max_softmax: 1 - the largest (temperature-calibrated) probability.

`python -m busi ood-eval` writes benchmarks/reports/ood.{json,md}; `python -m busi bench`
puts the same section into the full report.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from benchmarks import ood_sets
from benchmarks.machine import command_line
from edge_infer.calibration import apply_temperature
from edge_infer.classifier import Classifier
from edge_infer.inputs import labelled_csv
from edge_infer.manifest import (
    MANIFEST_FILENAME,
    SPLIT_FILENAME,
    ModelError,
    models_dir,
    read_manifest,
)
from edge_infer.metrics import detection_auroc
from edge_infer.ood import (
    TARGET_FALSE_ALARM,
    choose_threshold,
    colour_score,
    energy_score,
    max_softmax_score,
)
from edge_infer.preprocess import decode_image, to_model_input
from edge_infer.splits import bus_bra_split_files, split_files
from edge_infer.tflite_model import TFLiteModel
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir, resolve_external_dir

HEADING = "## Out-of-distribution check (images that are not breast ultrasound)"
JSON_NAME, MARKDOWN_NAME = "ood.json", "ood.md"
METHODS: dict[str, str] = {
    "shipped": "shipped rule: feature distance or colour (max of score / threshold)",
    "feature": "feature distance alone (PPCA Mahalanobis, unit-length pooled features)",
    "colour": "colour alone (off-tint pixel fraction)",
    "energy": "energy of the logits",
    "max_softmax": "1 - max softmax probability",
}
SETS: dict[str, str] = {
    "val": "BUSI validation split (chooses the comparison methods' thresholds)",
    "test": "BUSI test split: in-distribution",
    "package": "scikit-image + scikit-learn images, whole and quadrant crops: OOD",
    "synthetic": "synthetic images (noise, flat, gradients, checkerboards, text, screenshots): OOD",
    "medical": "other modalities: pydicom's CT, MR and colour-ultrasound test files, matplotlib's "
               "MR slice, Shepp-Logan CT reconstructions (windows, mirrored, crops): OOD",
    "doppler": "colour Doppler-dominated frames drawn over BUSI test scans: OOD",
    "corrupted": "BUSI test images, heavily corrupted (noise, blur, negative, jigsaw, dark)",
    "breast_lesions_usg": "BrEaST-Lesions_USG: breast ultrasound of another hospital (info)",
    "bus_bra": "BUS-BRA test patients: breast ultrasound of another country and scanners "
               "(info)",
}
OOD_SETS: tuple[str, ...] = ood_sets.OOD_GROUPS
REAL_SETS: tuple[str, ...] = ("test", "bus_bra", "breast_lesions_usg")
BOUNDARY_MULTIPLES: tuple[float, ...] = (1.5, 2.0, 3.0)  # what-if refuse boundaries, for the report
TIERS: tuple[str, ...] = ("ok", "warn", "refuse")
OTHER_SITES: tuple[str, ...] = ("breast_lesions_usg", "bus_bra")
Named = tuple[str, Callable[[], object]]  # (name, a function giving the RGB PIL image)


def _files(items: Iterable[tuple[str, Path]]) -> list[Named]:
    return [(name, lambda path=path: decode_image(path).image) for name, path in items]


def _generated(images: Iterable[ood_sets.NamedImage]) -> Iterator[Named]:
    for named in images:
        yield named.name, lambda image=named.image: image


def evaluation_sets(root: Path, split_file: Path, external: Path | None,
                    bus_bra: Path | None, stride: int) -> dict[str, list[Named] | Iterator]:
    """Every set as (name, image loader) pairs, every stride-th image; sets whose folder is
    absent are left out."""
    busi = {split: [(row.file, root / row.file) for row in split_files(split, split_file)]
            for split in ("val", "test")}
    sets: dict = {split: _files(items[::stride]) for split, items in busi.items()}
    sets["package"] = list(_generated(ood_sets.package_images()[::stride]))
    sets["synthetic"] = list(_generated(ood_sets.synthetic_images()[::stride]))
    sets["medical"] = list(_generated(ood_sets.medical_images()[::stride]))
    sets["doppler"] = list(_generated(ood_sets.doppler_images(
        [path for _, path in busi["test"]])[::stride]))
    sets["corrupted"] = _generated(ood_sets.corrupted_images(
        [path for _, path in busi["test"][::stride]]))
    if external is not None:
        found = labelled_csv(external / "labels.csv")
        sets["breast_lesions_usg"] = _files((path.relative_to(external).as_posix(), path)
                                            for path, _ in found.items[::stride])
    if bus_bra is not None:  # test patients only: a model may be fitted on the others
        rows = bus_bra_split_files("test", split_file.parent)
        sets["bus_bra"] = _files((row.file, bus_bra / row.file) for row in rows[::stride])
    return sets


def score_sets(classifiers: dict[str, Classifier], sets: dict) -> tuple[dict, dict]:
    """(scores[variant][set][method] arrays, plus "tier" (index into TIERS) and "check_ms",
    names[set]): every image decoded once and run through every variant."""
    scores = {key: {} for key in classifiers}
    models = {key: TFLiteModel(c.entry.path) for key, c in classifiers.items()}
    names: dict[str, list[str]] = {}
    for set_name, items in sets.items():
        rows = {key: [] for key in classifiers}
        names[set_name] = []
        for name, load in tqdm(items, desc=f"ood {set_name}", leave=False, file=sys.stderr):
            image = load()
            model_input, colour = to_model_input(image), colour_score(image)
            names[set_name].append(name)
            for key, classifier in classifiers.items():
                output = models[key].run(model_input)
                check = classifier.input_check
                started = time.perf_counter()
                verdict = check.check(output.pooled_features, image)
                check_ms = (time.perf_counter() - started) * 1000.0
                feature = verdict.ood_score
                rows[key].append((
                    max(feature / check.threshold, colour / check.colour_threshold),
                    feature, colour,
                    float(energy_score(classifier.cam_head.logits(output.feature_map))),
                    float(max_softmax_score(apply_temperature(
                        output.probs, classifier.calibration.temperature))),
                    TIERS.index(verdict.tier), check_ms))
        for key in classifiers:
            table = np.array(rows[key], dtype=np.float64).reshape(-1, len(METHODS) + 2)
            scores[key][set_name] = dict(zip([*METHODS, "tier", "check_ms"], table.T))
    return scores, names


def _rate(flags: np.ndarray) -> dict:
    return {"rate": float(flags.mean()) if len(flags) else float("nan"),
            "flagged": int(flags.sum()), "n": len(flags)}


def method_figures(scores: dict[str, dict[str, np.ndarray]], method: str,
                   threshold: float) -> dict:
    """AUROC against the OOD set and the corrupted images, and the flagged share of every set
    at the threshold (flagged: score > threshold)."""
    test = scores["test"][method]
    ood = np.concatenate([scores[s][method] for s in OOD_SETS])
    figures = {"threshold": threshold,
               "auroc_ood": detection_auroc(test, ood),
               "auroc_corrupted": detection_auroc(test, scores["corrupted"][method]),
               "flagged": {name: _rate(values[method] > threshold)
                           for name, values in scores.items()}}
    figures["flagged"]["ood"] = _rate(ood > threshold)
    return figures


def tier_figures(scores: dict, names: dict) -> dict:
    """Per set: the refused and warned shares, and the names of the images of the OOD sets
    that were not refused (and of real scans that were)."""
    figures = {}
    for name, values in scores.items():
        tiers = values["tier"].astype(int)
        figures[name] = {"refused": _rate(tiers == TIERS.index("refuse")),
                         "warned": _rate(tiers == TIERS.index("warn"))}
    ood = np.concatenate([scores[s]["tier"] for s in OOD_SETS]).astype(int)
    figures["ood"] = {"refused": _rate(ood == TIERS.index("refuse")),
                      "warned": _rate(ood == TIERS.index("warn"))}
    medical = np.array([n.split("/")[1] for n in names["medical"]])
    figures["medical_by_source"] = {
        source: {"refused": int((scores["medical"]["tier"][medical == source] == 2).sum()),
                 "warned": int((scores["medical"]["tier"][medical == source] == 1).sum()),
                 "n": int((medical == source).sum())} for source in dict.fromkeys(medical)}
    figures["not_refused_ood"] = [n for s in OOD_SETS for n, t in zip(names[s], scores[s]["tier"])
                                  if t != TIERS.index("refuse")]
    figures["refused_real"] = [n for s in REAL_SETS if s in names
                               for n, t in zip(names[s], scores[s]["tier"])
                               if t == TIERS.index("refuse")]
    timing = np.concatenate([values["check_ms"] for values in scores.values()])
    figures["check_ms"] = {"median": float(np.median(timing)),
                           "p95": float(np.percentile(timing, 95)), "n": len(timing)}
    return figures


def boundary_tradeoff(scores: dict, detector) -> list[dict]:
    """For information, never used to choose: the refused share of the non-ultrasound images
    and of each real breast set had the refuse boundary been another multiple of the warning
    threshold (refusals by colour and frame checks unchanged)."""
    def refused(values: dict, multiple: float) -> np.ndarray:
        by_other_checks = ((values["tier"] == TIERS.index("refuse"))
                           & (values["feature"] <= detector.refuse_threshold))
        return by_other_checks | (values["feature"] > multiple * detector.threshold)

    rows = []
    for multiple in sorted({*BOUNDARY_MULTIPLES,
                            detector.refuse_threshold / detector.threshold}):
        row = {"multiple": multiple, "ood": _rate(np.concatenate(
            [refused(scores[s], multiple) for s in OOD_SETS]))}
        row.update({s: _rate(refused(scores[s], multiple)) for s in REAL_SETS if s in scores})
        rows.append(row)
    return rows


def variant_results(classifier: Classifier, scores: dict, names: dict) -> dict:
    """Every method's figures for one variant, the two tiers' figures, and which images the
    shipped rule got wrong."""
    thresholds = {"shipped": 1.0, "feature": classifier.input_check.threshold,
                  "colour": classifier.input_check.colour_threshold}
    for method in ("energy", "max_softmax"):
        thresholds[method] = choose_threshold(scores["val"][method], TARGET_FALSE_ALARM)
    shipped = {name: values["shipped"] > 1.0 for name, values in scores.items()}
    kinds = np.array([name.rsplit("/", 1)[-1] for name in names["corrupted"]])
    return {
        "model": classifier.model_info,
        "methods": {method: method_figures(scores, method, thresholds[method])
                    for method in METHODS},
        "tiers": tier_figures(scores, names),
        "boundary_tradeoff": boundary_tradeoff(scores, classifier.input_check),
        "refuse_threshold": classifier.input_check.refuse_threshold,
        "corrupted_by_kind": {kind: _rate(shipped["corrupted"][kinds == kind])
                              for kind in ood_sets.CORRUPTIONS},
        "missed_ood": [name for s in OOD_SETS for name, flag in zip(names[s], shipped[s])
                       if not flag],
        "flagged_test": [name for name, flag in zip(names["test"], shipped["test"]) if flag],
    }


def ood_results(arch: str, manifest_file: Path, root: Path, external: Path | None,
                bus_bra: Path | None, stride: int = 1, threads: int = 2) -> dict:
    """The OOD section for every TFLite variant of an architecture that has a fitted check
    (skipped, with the reason, when none has)."""
    manifest = read_manifest(manifest_file)
    keys = [key for key, info in manifest["models"].items()
            if info["arch"] == arch and info["format"] == "tflite" and "ood" in info]
    if not keys:
        return {"skipped": f"no {arch} TFLite model has a fitted OOD check (run busi ood-fit)"}
    classifiers = {key: Classifier(key, threads=threads, manifest_file=manifest_file)
                   for key in keys}
    missing = [key for key, c in classifiers.items() if c.cam_head is None]
    if missing:
        return {"skipped": f"{', '.join(missing)} has no classifier head for the energy score"}
    sets = evaluation_sets(root, manifest_file.parent / SPLIT_FILENAME, external, bus_bra,
                           stride)
    scores, names = score_sets(classifiers, sets)
    return {
        "arch": arch, "stride": stride, "target_false_alarm": TARGET_FALSE_ALARM,
        "fitted_on": manifest["models"][keys[0]]["ood"]["fitted_on"],
        "threshold_chosen_on": manifest["models"][keys[0]]["ood"]["threshold_chosen_on"],
        "methods": METHODS,
        "sets": {name: {"description": SETS[name], "n": len(names[name])} for name in names},
        "package_images": list(ood_sets.SKIMAGE_IMAGES) + ["lfw_subset (first "
                                                           f"{ood_sets.LFW_FACES} faces)",
                                                           "sklearn china", "sklearn flower"],
        "variants": {key: variant_results(classifiers[key], scores[key], names)
                     for key in keys},
    }


def _pct(block: dict) -> str:
    return f"{block['rate']:.1%} ({block['flagged']}/{block['n']})"


def _auc(value: float) -> str:
    return "—" if value != value else f"{value:.3f}"


def ood_section(results: dict) -> list[str]:
    """The report section: per variant, every method's AUROC and flagged shares."""
    section = results.get("ood")
    lines = [HEADING, ""]
    if not section or "skipped" in section:
        return lines + [f"Not measured: {(section or {}).get('skipped', 'not in this run')}.", ""]
    sets = section["sets"]
    lines += [
        f"Does the runtime notice an image that is not breast ultrasound? In-distribution: "
        f"BUSI test ({sets['test']['n']} images). Out-of-distribution (OOD): "
        f"{sets['package']['n']} images that scikit-image and scikit-learn ship (whole and "
        f"quadrant crops: {', '.join(section['package_images'])}) and "
        f"{sets['synthetic']['n']} synthetic ones (noise incl. Rayleigh speckle without "
        "anatomy, flat grey and colour, gradients, checkerboards, text, screenshot-like "
        f"layouts, grey shapes). Corrupted: {sets['corrupted']['n']} BUSI test images under "
        "noise σ=100, blur r=12, negative, 8×8 jigsaw and 1/12 brightness: ultrasound "
        "underneath, reported apart, neither side of the AUROC. Other sites (for information: "
        "every flag there is a false alarm on real breast ultrasound): "
        + ", ".join(f"{name} {sets[name]['n']} images" for name in OTHER_SITES if name in sets)
        + ".", "",
        "Shipped check: "
        f"{section.get('fitted_on', 'pooled features of the training split')}, thresholds "
        f"chosen on the {section.get('threshold_chosen_on', 'validation split')} for ≤ "
        f"{section['target_false_alarm']:.0%} false alarms "
        "(`busi ood-fit`); energy and max-softmax get thresholds on validation by the same rule. "
        "Flagged = score above the threshold. AUROC: BUSI test against OOD (against corrupted "
        "in brackets).", ""]
    if section["stride"] != 1:
        lines += [f"Quick run: every {section['stride']}th image of each set.", ""]
    for key, info in section["variants"].items():
        header = ["method", "AUROC (corrupted)", "false alarms, BUSI val",
                  "false alarms, BUSI test", "OOD flagged", "package", "synthetic",
                  "corrupted flagged", *(f"{name} flagged" for name in OTHER_SITES
                                         if name in sets)]
        rows = []
        for method, figures in info["methods"].items():
            flagged = figures["flagged"]
            rows.append([section["methods"][method],
                         f"{_auc(figures['auroc_ood'])} ({_auc(figures['auroc_corrupted'])})",
                         _pct(flagged["val"]), _pct(flagged["test"]), _pct(flagged["ood"]),
                         _pct(flagged["package"]), _pct(flagged["synthetic"]),
                         _pct(flagged["corrupted"]),
                         *(_pct(flagged[name]) for name in OTHER_SITES if name in flagged)])
        kinds = ", ".join(f"{kind} {_pct(block)}" for kind, block
                          in info["corrupted_by_kind"].items())
        missed = ", ".join(info["missed_ood"]) or "none"
        flagged_test = ", ".join(info["flagged_test"]) or "none"
        lines += [f"### {key}", "", *tier_lines(info, sets),
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  *("| " + " | ".join(row) + " |" for row in rows), "",
                  f"Shipped rule on the corrupted images, by corruption: {kinds}.  ",
                  f"OOD images it lets through: {missed}.  ",
                  f"BUSI test images it flags: {flagged_test}.", ""]
    return lines


def tier_lines(info: dict, sets: dict) -> list[str]:
    """The two tiers as shipped: refused and warned shares of every set, and the check's cost."""
    tiers = info["tiers"]
    order = ["test", *(s for s in OTHER_SITES if s in sets), "val", *OOD_SETS, "ood",
             "corrupted"]
    names = {"test": "BUSI test", "val": "BUSI val", "bus_bra": "BUS-BRA test patients",
             "breast_lesions_usg": "BrEaST (test only)", "ood": "all non-ultrasound"}
    rows = [f"| {names.get(s, s)} | {_pct(tiers[s]['refused'])} | {_pct(tiers[s]['warned'])} |"
            for s in order if s in tiers]
    medical = ", ".join(f"{source} {v['refused']} refused / {v['warned']} warned of {v['n']}"
                        for source, v in tiers["medical_by_source"].items())
    timing = tiers["check_ms"]
    return ["Two tiers as shipped (warning threshold "
            f"{info['methods']['feature']['threshold']:.3f}, refuse boundary "
            f"{info['refuse_threshold']:.3f}): refused = not a breast ultrasound, no label; "
            "warned = labelled with a domain warning.", "",
            "| set | refused | warned |", "|---|---|---|", *rows, "",
            f"Other modalities by source: {medical}.  ",
            f"Real breast scans refused: {', '.join(tiers['refused_real']) or 'none'}.  ",
            f"Whole check (colour, frame checks, feature distance) per image beside the model: "
            f"median {timing['median']:.2f} ms, 95th percentile {timing['p95']:.2f} ms "
            f"({timing['n']} images).", "",
            "Had the refuse boundary been another multiple of the warning threshold (for "
            "information; it is chosen by leaving a training site out, never on these):", "",
            "| boundary × warning threshold | non-ultrasound refused | BUSI test refused | "
            "BUS-BRA test refused | BrEaST refused |", "|---|---|---|---|---|",
            *(f"| {row['multiple']:.2f} | {_pct(row['ood'])} | "
              + " | ".join(_pct(row[s]) if s in row else "—" for s in REAL_SETS) + " |"
              for row in info["boundary_tradeoff"]), ""]


def write_ood_report(section: dict, out: Path) -> tuple[Path, Path]:
    """ood.json (the figures) and ood.md (the section as a page) in out."""
    out.mkdir(parents=True, exist_ok=True)
    from edge_infer.evaluation import json_ready

    json_path, md_path = out / JSON_NAME, out / MARKDOWN_NAME
    json_path.write_text(json.dumps(json_ready(section), indent=1, allow_nan=False) + "\n")
    page = ["# Out-of-distribution check", "", f"{section.get('created', '')} · "
            f"`{section.get('command', '')}`", "", *ood_section({"ood": section})[2:]]
    md_path.write_text("\n".join(page))
    return json_path, md_path


def bus_bra_if_present() -> Path | None:
    """The BUS-BRA folder ($BUS_BRA_DIR or ../shared/datasets/bus_bra), or None."""
    try:
        return resolve_bus_bra_dir()
    except FileNotFoundError:
        return None


def _optional(resolve: Callable[[str | None], Path], path: str | None) -> Path | None:
    try:
        return resolve(path)
    except FileNotFoundError as err:
        click.echo(f"note: {err}: its row is left out", err=True)
        return None


@click.command(help=__doc__)
@click.option("--arch", default=None, help="Architecture in the manifest (default: its default).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "reports", show_default=True,
              help="Folder for ood.json and ood.md.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--external-dir", type=click.Path(file_okay=False),
              help="BrEaST-Lesions_USG folder (or $BREAST_LESIONS_DIR); left out if absent.")
@click.option("--bus-bra-dir", type=click.Path(file_okay=False),
              help="BUS-BRA folder (or $BUS_BRA_DIR); left out if absent.")
@click.option("--stride", type=click.IntRange(1), default=1, show_default=True,
              help="Every stride-th image of each set (a quick check).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
def main(arch: str | None, out: Path, busi_dir: str | None, external_dir: str | None,
         bus_bra_dir: str | None, stride: int, threads: int) -> None:
    manifest_file = models_dir() / MANIFEST_FILENAME
    try:
        arch = arch or read_manifest(manifest_file).get("default_arch")
        root = resolve_busi_dir(busi_dir)
        section = ood_results(arch, manifest_file, root,
                              _optional(resolve_external_dir, external_dir),
                              _optional(resolve_bus_bra_dir, bus_bra_dir), stride, threads)
    except (ModelError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    if "skipped" in section:
        raise click.ClickException(section["skipped"])
    section["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    section["command"] = command_line("ood-eval")
    json_path, md_path = write_ood_report(section, out)
    click.echo(f"wrote {md_path} and {json_path}", err=True)


if __name__ == "__main__":
    main()
