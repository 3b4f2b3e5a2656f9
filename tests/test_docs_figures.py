"""The lever screen in docs/model.md says what its reports hold: every row's per-fold accuracy and
means are recomputed from benchmarks/reports/ (screen_levers.json, and the first three folds of
the two CV summaries for the baseline and the shipped options)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "benchmarks" / "reports"
SCREEN_FOLDS = 3


def screened_levers() -> dict[str, list[dict[str, float]]]:
    """Each screened lever's BUSI test-fold accuracy, macro-F1 and BUS-BRA test AUROC per fold."""
    levers = json.loads((REPORTS / "screen_levers.json").read_text())
    for name, report in (("baseline", "cv_baseline_recipe.json"),
                         ("shipped", "cv_shipped_recipe.json")):
        cv = json.loads((REPORTS / report).read_text())
        per_fold = [cv[key]["per_fold"][:SCREEN_FOLDS] for key in
                    ("accuracy", "macro_f1", "bus_bra_test_auc_benign_vs_malignant")]
        levers[name] = [{"accuracy": accuracy, "macro_f1": macro_f1, "bus_bra_test_auc": auc}
                        for accuracy, macro_f1, auc in zip(*per_fold)]
    return levers


def row_cells(folds: list[dict[str, float]]) -> str:
    """The table cells after the lever's name: per-fold accuracy, then the three means."""
    means = [f"{mean(fold[key] for fold in folds):.3f}"
             for key in ("accuracy", "macro_f1", "bus_bra_test_auc")]
    per_fold = ", ".join(f"{fold['accuracy']:.3f}" for fold in folds)
    return f"| {per_fold} | {' | '.join(means)} |"


def test_every_screened_lever_is_a_row_of_the_model_page() -> None:
    page = (REPO / "docs" / "model.md").read_text()
    levers = screened_levers()
    assert all(len(folds) == SCREEN_FOLDS for folds in levers.values())
    missing = {lever: row_cells(folds) for lever, folds in levers.items()
               if row_cells(folds) not in page}
    assert not missing, missing
