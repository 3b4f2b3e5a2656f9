"""The site table in the benchmark report: its figures for the shipped default model are what
the shipped int8 model gives now, through the runtime, on BUS-BRA's test patients; and the
site-profile simulation on halves of a hospital's cases (split by patient, adding up, of the
shipped model, meeting its target)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_infer.classifier import Classifier
from edge_infer.metrics import auc_benign_vs_malignant
from edge_infer.rates import malignant_called
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX
from edge_infer.splits import bus_bra_split_files, load_images

SITES_REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "reports" / "sites.json"


@pytest.fixture(scope="module")
def shipped_row(manifest: dict) -> dict:
    table = json.loads(SITES_REPORT.read_text())
    trained = manifest["models"][f"{manifest['default_arch']}/keras"]["training"]["config"]
    rows = [row for row in table["models"] if row["config"] == trained]
    assert rows, "the site table has no row for the shipped default model: rerun benchmarks.sites"
    return rows[0]


def test_site_table_matches_the_shipped_int8_on_bus_bra_test(shipped_row, bus_bra_root):
    rows = bus_bra_split_files("test")
    images, labels = load_images(rows, bus_bra_root)
    classifier = Classifier("int8", threads=2)
    probs = np.stack([classifier.predict_proba(image) for image in images])
    reported = shipped_row["variants"]["int8"]["sets"]["BUS-BRA test"]
    assert reported["n"] == len(rows) == 81
    auc = auc_benign_vs_malignant(labels, probs[:, MALIGNANT_INDEX])
    assert auc == pytest.approx(reported["auc_benign_vs_malignant"]["value"], abs=0.01)
    called = malignant_called(probs, classifier.threshold)  # argmax or P(malignant) >= T
    sensitivity = called[labels == MALIGNANT_INDEX].mean()
    assert sensitivity == pytest.approx(reported["high_sensitivity"]["sensitivity"], abs=0.04)


def test_site_table_says_which_validation_each_threshold_came_from(shipped_row):
    assert shipped_row["validation"] == ["BUSI val", "BUS-BRA val"]
    for figures in shipped_row["variants"].values():
        assert 0 < figures["threshold"] < 1 and figures["temperature"] > 0


# --- site profiles on held-out halves of a hospital (python -m busi site-halves) -----------

HALVES_REPORT = SITES_REPORT.with_name("site_halves.json")


def test_halves_split_by_patient_and_stratified() -> None:
    from benchmarks.site_halves import halves_by_case

    rows = bus_bra_split_files("test")
    cases = [str(row.group) for row in rows]
    labels = np.array([CLASS_NAMES.index(row.label) for row in rows])
    a, b = halves_by_case(cases, labels, np.random.default_rng(3))
    assert sorted([*a, *b]) == list(range(len(rows)))
    assert not {cases[i] for i in a} & {cases[i] for i in b}  # no patient in both halves
    for label in range(len(CLASS_NAMES)):
        in_a = len({cases[i] for i in a if labels[i] == label})
        in_b = len({cases[i] for i in b if labels[i] == label})
        assert abs(in_a - in_b) <= 1


def test_the_halves_report_is_of_the_shipped_model_and_adds_up(classifier: Classifier) -> None:
    from benchmarks.site_halves import SPLITS, summarise

    report = json.loads(HALVES_REPORT.read_text())
    assert report["model"] == classifier.model_info, "rerun python -m busi site-halves"
    for name, block in report["sets"].items():
        assert len(block["runs"]) == 2 * SPLITS, name
        assert summarise(block["runs"]) == block["summary"], name
        summary = block["summary"]
        # whether the target is met is a reported figure (docs/sites.md); what must
        # hold is that the profile's conservative threshold keeps more of its promise on the
        # held-out half than the plain rule it replaced
        assert summary["profile"]["sensitivity_mean"] > summary["plain"]["sensitivity_mean"], name
        assert summary["profile"]["sensitivity_min"] >= summary["plain"]["sensitivity_min"], name
