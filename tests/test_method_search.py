"""The learning-rate search script (benchmarks/toy_method_search.py): equal effort per method and its rule."""

from __future__ import annotations

import json
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


def test_factors_multiply_the_published_reference_and_no_default_leaks_in():
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmark_search" / "reference.json"
    reference = json.loads(path.read_text())
    # the benchmark merges method_settings over DEFAULT_METHOD_SETTINGS: a method missing here would keep today's
    # (already searched) rate unscaled
    assert set(DEFAULT_METHOD_SETTINGS) <= set(reference["method_settings"])
    training, settings = search.scaled_settings(10.0, reference)
    assert training["motion_lr"] == pytest.approx(10 * reference["training"]["motion_lr"])
    assert settings["textual-inversion"]["ti_lr"] == pytest.approx(10 * 5e-3)
    assert settings["finetune"]["motion_lr"] == pytest.approx(10 * 1e-4)


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
