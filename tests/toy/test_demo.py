"""``dreamvideo demo``'s own choices (the full run is in test_shipped_model.py)."""

from __future__ import annotations

import torch

from dreamvideo.cli import main
from dreamvideo.threads import MAX_DEFAULT_THREADS, available_cores
from dreamvideo.toy import demo


def test_demo_uses_every_core_unless_threads_are_asked_for(monkeypatch, tmp_path):
    fake = {"summary": {"by_case": {}, "customized_vs_base": {}}, "seconds": {}, "device": "cpu"}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: fake)
    monkeypatch.setattr(demo, "format_markdown", lambda result: "")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["demo", "--out", str(tmp_path / "a"), "--quiet"]) == 0
        assert torch.get_num_threads() == min(MAX_DEFAULT_THREADS, available_cores())
        assert main(["demo", "--out", str(tmp_path / "b"), "--quiet", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert main(["demo", "--out", str(tmp_path / "c"), "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_motion_cases_have_their_own_seeds():
    cfg = demo.DemoConfig(seeds=(0,), motion_seeds=(0, 1, 2), backgrounds=("blue sky",))
    cases = demo._cases(cfg, "<sks>", "square")
    motion = [c for c in cases if c.case == "motion"]
    assert len(motion) == 3 * len(cfg.motion_scenes) and {c.seed for c in motion} == {0, 1, 2}
    assert {c.seed for c in cases if c.case == "subject"} == {0}
