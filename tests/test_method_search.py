"""The learning-rate search script (benchmarks/toy_method_search.py): equal effort per method and its rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toy_method_search as search  # noqa: E402

from dreamvideo.benchmark.grid import DEFAULT_METHOD_SETTINGS, DEFAULT_TRAINING  # noqa: E402


def test_every_learning_rate_is_scaled_by_the_same_factor():
    training, settings = search.scaled_settings(3.0)
    for key in ("ti_lr", "identity_lr", "motion_lr"):
        assert training[key] == pytest.approx(3 * DEFAULT_TRAINING[key])
    for method, values in DEFAULT_METHOD_SETTINGS.items():
        for key in ("subject_lr", "motion_lr", "ti_lr", "identity_lr"):
            if key in values:
                assert settings[method][key] == pytest.approx(3 * values[key])
        assert settings[method].get("rank") == values.get("rank")
    assert search.learning_rates("dreamvideo", "subject", training, settings) == {
        "ti_lr": training["ti_lr"],
        "identity_lr": training["identity_lr"],
    }
    assert search.learning_rates("textual-inversion", "subject", training, settings) == {
        "ti_lr": settings["textual-inversion"]["ti_lr"]
    }
    assert search.learning_rates("lora", "motion", training, settings) == {
        "motion_lr": settings["lora"]["motion_lr"]
    }


def _rows(entry, case, fidelity, background):
    key = "subject_fidelity" if case == "subject" else "motion_fidelity"
    return [{"entry": entry, "case": case, "group": "method", key: fidelity, "background_ok": background}]


def test_the_best_factor_wins_unless_it_breaks_the_prompt():
    runs = {}
    for factor, (fid, bg) in {0.3: (0.2, 1.0), 1.0: (0.3, 1.0), 3.0: (0.5, 0.5)}.items():
        rows = _rows("base", "subject", 0.1, 1.0) + _rows("base", "motion", 0.0, 1.0)
        rows += _rows("textual-inversion", "subject", fid, bg)
        runs[factor] = ({"rows": rows}, *search.scaled_settings(factor))
    report = search.search_report(runs, "lantern", "leap", 0)
    ti = report["methods"]["textual-inversion|subject"]
    assert [c["eligible"] for c in ti["candidates"]] == [True, True, False]  # 0.5 < 1.0 - 0.25
    assert ti["chosen"] == 1.0 and ti["lr"] == {
        "ti_lr": DEFAULT_METHOD_SETTINGS["textual-inversion"]["ti_lr"]
    }
    assert "**yes**" in search.format_report(report) and "excluded" in search.format_report(report)
