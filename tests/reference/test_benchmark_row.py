"""The appearance encoder's row in ``dreamvideo benchmark``: trained once, zero per-subject time, paired tables."""

from __future__ import annotations

from conftest import tiny_config
from test_pipeline_and_cli import _pairs_folder

from dreamvideo import benchmark as bm


def test_encoder_row_on_a_tiny_grid(tiny_base, tiny_data, tiny_clip, tmp_path):
    cfg = tiny_config(tiny_base, tiny_data, tiny_clip)
    cfg |= {"methods": ["dreamvideo", "appearance-encoder"], "ablations": [], "tradeoff": None}
    cfg["training"] |= {
        "encoder_steps": 1,
        "encoder_batch_size": 1,
        "encoder_pairs": str(_pairs_folder(tmp_path / "pairs")),
    }
    out = tmp_path / "bench"
    results = bm.Benchmark(bm.BenchmarkConfig.from_dict(cfg), out, device="cpu", progress=False).run()
    rows = [r for r in results["rows"] if r["entry"] == "appearance-encoder"]
    assert {r["case"] for r in rows} == {"subject", "joint"}
    assert all(r["prompt"].startswith("a dog") for r in rows)  # zero-shot: the class word, no learned token
    assert len(list((out / "train" / "encoder").iterdir())) == 1  # one encoder for every subject
    table = {(t["entry"], t["case"]): t for t in results["summary"]["table"]}
    enc = table["appearance-encoder", "subject"]
    assert enc["per_subject_seconds"] == 0.0 and enc["trainable_parameters"] > 0
    assert enc["vs_base"]["subject_fidelity"]["n"] == 1 and enc["vs_dreamvideo"]["subject_fidelity"]["n"] == 1
    md = (out / "results.md").read_text()
    assert "appearance encoder, zero-shot" in md and "vs DreamVideo's learned subjects" in md
    again = bm.Benchmark(bm.BenchmarkConfig.from_dict(cfg), out, device="cpu", progress=False).run()
    assert again["stats"]["trained"] == 0 and again["stats"]["generated"] == 0
