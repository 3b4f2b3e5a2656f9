"""`missing`: a skip on a developer's machine, a failure under CI (issue 25)."""

from __future__ import annotations

import pytest
from required import missing


def test_missing_data_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="BUSI dataset absent"):
        missing("BUSI dataset absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="BUSI dataset absent .CI is set"):
        missing("BUSI dataset absent")
