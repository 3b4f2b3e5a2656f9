"""The manifest's and a site profile's values are checked before any decision uses them:
finite temperatures, thresholds in [0, 1], finite input-check thresholds, and files of bounded
size and nesting; each refusal is one line (issue 25)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_infer import manifest as manifest_module
from edge_infer.cli import main
from edge_infer.jsonfile import JsonFileError, read_json
from edge_infer.manifest import ModelError, check_entry_values, resolve_model
from edge_infer.site_profile import ProfileError, load_profile


@pytest.fixture(scope="module")
def int8_info(manifest: dict) -> tuple[str, dict]:
    entry = resolve_model("int8")
    return entry.key, entry.info


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e.update(threshold=math.nan), "threshold must be a finite number in [0.0, 1.0]"),
    (lambda e: e.update(threshold=1.5), "threshold must be a finite number in [0.0, 1.0]"),
    (lambda e: e.update(threshold="0.5"), "threshold must be a finite number"),
    (lambda e: e.update(temperature=math.inf), "temperature must be a finite number"),
    (lambda e: e.update(temperature=0), "temperature must be a finite number"),
    (lambda e: e["ood"].update(threshold=math.nan), "ood: threshold must be a finite number"),
    (lambda e: e["ood"].update(colour_threshold=-0.1), "colour_threshold must be a finite"),
    (lambda e: e.update(ood=[]), "ood must be a table"),
], ids=["nan", "over-1", "text", "inf-temperature", "zero-temperature", "ood-nan",
        "colour-negative", "ood-list"])
def test_bad_entry_values_are_refused(int8_info: tuple[str, dict], change,
                                      message: str) -> None:
    key, info = int8_info
    check_entry_values(key, info)  # the shipped values pass
    damaged = json.loads(json.dumps(info))
    change(damaged)
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")) \
            as raised:
        check_entry_values(key, damaged)
    assert "\n" not in str(raised.value)


def test_a_manifest_with_a_nan_threshold_is_exit_1(manifest: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: the model files linked beside a manifest whose int8 threshold is NaN."""
    entry = resolve_model("int8")
    damaged = json.loads(json.dumps(manifest))
    damaged["models"][entry.key]["threshold"] = math.nan
    for name in {e["file"] for e in manifest["models"].values()}:
        source = entry.path.parent / name
        if source.exists():
            (tmp_path / name).symlink_to(source)
    (tmp_path / "manifest.json").write_text(json.dumps(damaged))
    monkeypatch.setattr(manifest_module, "manifest_path", lambda: tmp_path / "manifest.json")
    result = CliRunner().invoke(main, ["classify", str(tmp_path / "manifest.json")])
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"error: model manifest: {entry.key}: threshold must be a finite "
                             "number in [0.0, 1.0], got nan\n")


def test_deep_json_is_refused_without_recursing(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(JsonFileError, match="nests deeper than 32 levels"):
        read_json(deep)
    fine = tmp_path / "fine.json"
    fine.write_text(json.dumps({"a": ["[{", {"b": 1}]}))  # brackets inside strings don't count
    assert read_json(fine, max_depth=3) == {"a": ["[{", {"b": 1}]}


def test_huge_and_deep_profiles_are_one_line(tmp_path: Path, manifest: dict) -> None:
    entry = resolve_model("int8")
    huge, deep = tmp_path / "huge.json", tmp_path / "deep.json"
    huge.write_text(json.dumps({"padding": "x" * (2 * 2**20)}))
    deep.write_text('{"kind": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for path, reason in ((huge, "is over 1 MiB"), (deep, "nests deeper")):
        with pytest.raises(ProfileError, match=reason) as raised:
            load_profile(path, entry)
        assert str(raised.value).startswith(f"cannot read site profile {path}: ")
    result = CliRunner().invoke(main, ["serve", "--site", str(deep)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
