"""The report's calibration and site-recalibration sections (Markdown), from the results of
`benchmarks.calibration_report`. Free of scikit-learn and matplotlib, like `benchmarks.report`."""

from __future__ import annotations

import math

from edge_infer.spec import CLASS_NAMES

CALIBRATION_HEADING = "## Calibration"
SITE_HEADING = "## Site recalibration: a simulated new clinic (BrEaST halves)"


def _value(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        f"{value:.{digits}f}"


def _with_interval(block: dict, key: str) -> str:
    low, high = block["intervals_95"][key]
    interval = "" if low is None or math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{_value(block[key])}{interval}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def calibration_lines(results: dict) -> list[str]:
    """The calibration section: temperatures, before/after figures, the reliability diagram."""
    calibration = results.get("calibration")
    if not calibration:
        return [CALIBRATION_HEADING, "", "This run has no calibration results.", ""]
    rows = []
    for name, info in calibration.items():
        high = info["test"]["high_sensitivity"]
        rows.append([name, _value(info["temperature"]), info["source"],
                     _value(info["temperature_best_on_test"]),
                     *(f"{_value(info[m]['before'])} → {_value(info[m]['after'])}"
                       for m in ("ece", "brier", "nll")),
                     _value(info["threshold"]), _with_interval(high, "sensitivity"),
                     _with_interval(high, "specificity")])
    counts = results["data"]["class_counts"]
    return [CALIBRATION_HEADING, "",
            "Temperature scaling: p → softmax(log p / T), one T per variant fitted on the "
            "model's validation data (BUSI's split, plus BUS-BRA's validation patients for a "
            "model trained across sites) from the variant's own outputs (int8: its dequantized "
            "uint8 probabilities) by minimising the negative log-likelihood (`busi calibrate`; "
            "`edge_infer.calibration`). Every result of the runtime, CLI, server and this "
            "benchmark uses the calibrated probabilities; the uncertain flag and the "
            "high-sensitivity threshold T are defined on them, and T is re-chosen on the "
            "calibrated validation probabilities (highest T with malignant recall ≥ 0.95). "
            "T < 1 sharpens: the models were trained with label smoothing and are "
            "under-confident.", "",
            f"Test split ({results['data']['test_images']} images, {counts['malignant']} "
            "malignant), before → after temperature: ECE (top label, 10 bins), multi-class "
            "Brier score, NLL. Sensitivity: malignant images called malignant at T; "
            "specificity: the other images not called malignant; brackets: 95 % bootstrap "
            f"interval ({results['settings']['resamples']} resamples, seed 0).", "",
            *_table(["Variant", "Temperature", "Fitted", "Test's own best temperature "
                     "(diagnostic, not used)", "ECE", "Brier", "NLL", "T (calibrated)",
                     "Test sensitivity @T", "Test specificity @T"], rows),
            *_verdict(calibration),
            f"![reliability before and after temperature scaling]"
            f"({results['plots']['reliability_calibration']})", "",
            f"![reliability diagram]({results['plots']['reliability']})", ""]


def _verdict(calibration: dict) -> list[str]:
    """Whether the temperature helped on the test split, said plainly."""
    worse = [name for name, info in calibration.items()
             if info["temperature"] is not None and info["ece"]["after"] > info["ece"]["before"]]
    if not worse:
        return ["Temperature scaling lowers (or keeps) every variant's test ECE.", ""]
    return [f"Temperature scaling fitted on validation makes test ECE worse for "
            f"{', '.join(worse)}: the temperature the test split itself would pick differs from "
            "the validation one (column 4), i.e. the two small splits disagree about the "
            "models' confidence; the temperature is still the one fitted on validation, as test "
            "data must not choose it.", ""]


def site_lines(results: dict) -> list[str]:
    """The two-halves simulation: shipped threshold vs site profile on the held-out half."""
    site = results.get("site_simulation") or {"skipped": "this run has no site simulation"}
    if "skipped" in site:
        return [SITE_HEADING, "", f"Skipped: {site['skipped']}.", ""]
    rows = []
    for run in site["runs"]:
        profile = run["profile"]
        for label, figures, temperature, threshold in (
                ("shipped", run["shipped"], site["shipped"]["temperature"],
                 site["shipped"]["threshold"]),
                (f"site profile from half {run['fit_half']}", run["site"],
                 profile["temperature"], profile["threshold"])):
            high = figures["high_sensitivity"]
            rows.append([f"{run['fit_half']} → {run['test_half']}", label,
                         _value(temperature), _value(threshold),
                         _with_interval(high, "sensitivity"), _with_interval(high, "specificity")])
    halves = ", ".join(
        f"{half}: {info['n']} ({' / '.join(str(info['class_counts'][c]) for c in CLASS_NAMES)})"
        for half, info in site["halves"].items())
    verdict = "met" if site["target_met"] else "not met"
    lines = [SITE_HEADING, "",
             f"A new clinic calibrates the shipped {site['variant']} model on its own labelled "
             "images: BrEaST-Lesions_USG split in two halves by case (stratified by class, seed "
             f"{site['seed']}; images normal / benign / malignant: {halves}). A site profile "
             "(temperature + threshold for malignant sensitivity ≥ 0.95, exactly what "
             "`edge-infer calibrate` fits) is fitted on one half and tested on the other, both "
             "ways, beside the shipped temperature and threshold (fitted on the model's "
             "validation data) on the same half. This is the only use of BrEaST for fitting; "
             "no fit sees the half it is tested on.", "",
             f"Target: malignant sensitivity ≥ {site['target_sensitivity']:.2f} on the other "
             f"half with the site profile — **{verdict}**.", "",
             *_table(["Fit → test half", "Calibration", "Temperature", "T",
                      "Sensitivity @T", "Specificity @T"], rows)]
    for run in site["runs"]:
        figures = run["profile"]["figures"]
        warnings = "; ".join(run["profile"]["warnings"]) or "none"
        lines.append(f"- Profile from half {run['fit_half']}: sensitivity on its own images "
                     f"{_value(figures['sensitivity']['value'])} "
                     f"[{_value(figures['sensitivity']['interval_95'][0])}, "
                     f"{_value(figures['sensitivity']['interval_95'][1])}], expected on new "
                     f"cases (out-of-bag refits) "
                     f"{_value(figures['sensitivity_new_cases']['value'])}; warnings: "
                     f"{warnings}.")
    return lines + [""]
