"""The benchmark end to end on the tiny model: a 2-method grid, its tables, and resumption cell by cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from dreamvideo import benchmark as bm
from dreamvideo.fileio import DreamVideoError, read_json


def test_tiny_grid_end_to_end_and_resumes_cell_by_cell(
    tiny_base, tiny_data, tiny_clip, tmp_path, monkeypatch
):
    from dreamvideo.training import Trainer

    calls, real_train = [], Trainer.train

    def spy_train(self, progress=True):
        calls.append((self.name, self.step, self.config.steps))
        return real_train(self, progress)

    monkeypatch.setattr(Trainer, "train", spy_train)
    config = bm.BenchmarkConfig.from_dict(tiny_config(tiny_base, tiny_data, tiny_clip))
    out = tmp_path / "bench"
    results = bm.Benchmark(config, out, device="cpu", progress=False).run()

    # 2 methods x (subject + motion) + the ablation's subject (its motion is DreamVideo's) trained once each;
    # every case of each entry (+ trade-off cells) generated once, shared cells once
    assert results["stats"]["trained"] == 5
    entries = {(r["entry"], r["case"]) for r in results["rows"] if r["group"] == "method"}
    assert entries == {(m, c) for m in ("dreamvideo", "lora") for c in ("subject", "motion", "joint")}
    assert results["stats"]["generated"] == len({r["cell"] for r in results["rows"]})
    joint = next(
        r
        for r in results["rows"]
        if r["entry"] == "dreamvideo" and r["case"] == "joint" and r["group"] == "method"
    )
    assert joint["prompt"] == "a <sks> dog moves left"
    assert {"clip_t", "clip_i", "t_cons", "subject_fidelity", "motion_fidelity"} <= set(joint)
    # the field's motion metrics (OpenCV fallbacks by default): track fidelity where a motion was learned
    assert {"track_motion_fidelity", "dynamic_degree", "flow_top5_mean"} <= set(joint)
    base_subject = next(r for r in results["rows"] if r["entry"] == "base" and r["case"] == "subject")
    assert "dynamic_degree" in base_subject and "track_motion_fidelity" not in base_subject
    assert results["motion_metrics"]["models"]["tracker"].startswith("lk: classical fallback")
    agreement = results["summary"]["track_agreement"]
    with_both = [r for r in results["rows"] if "track_motion_fidelity" in r and "motion_fidelity" in r]
    assert agreement["videos"] == len(with_both) >= 3
    # the ablation reused DreamVideo's textual inversion run instead of repeating it
    runs = {
        tuple(info["identity_adapter"]["sites"]): info
        for info in (read_json(f) for f in out.glob("train/subject/dog/dreamvideo-*/subject.json"))
    }
    assert set(runs) == {("attn2",), ("ff",)}
    assert runs["ff",]["losses"]["textual_inversion"] == runs["attn2",]["losses"]["textual_inversion"]
    ti_runs = [c for c in calls if c[0] == "textual inversion"]
    assert ti_runs == [("textual inversion", 0, 1), ("textual inversion", 1, 1)]  # the second starts done
    # section 6: DreamVideo's motion-only videos take an image of the prompt's foreground as appearance guidance
    # (on the toy world the prompt's sprite rendered on its background); LoRA has no appearance input
    cells = {
        r["entry"]: read_json(out / r["cell"] / "cell.json") for r in results["rows"] if r["case"] == "motion"
    }
    foreground = next(out.glob("data/foregrounds/*.png"))
    assert cells["dreamvideo"]["load"]["motion"] and "appearance" in cells["dreamvideo"]
    assert (out / cells["dreamvideo"]["appearance"]).resolve() == foreground.resolve()
    assert cells["lora"]["appearance"] is None
    lora_motion = next(r for r in results["rows"] if r["entry"] == "lora" and r["case"] == "motion")
    assert "subject_fidelity" not in lora_motion and "motion_fidelity" in lora_motion
    table = {(t["entry"], t["case"]): t for t in results["summary"]["table"]}
    assert table["dreamvideo", "joint"]["trainable_parameters"] == (
        table["dreamvideo", "subject"]["trainable_parameters"]
        + table["dreamvideo", "motion"]["trainable_parameters"]
    )
    assert table["base", "subject"]["trainable_parameters"] == 0
    joint_videos = table["dreamvideo", "joint"]["videos"]
    assert (
        table["dreamvideo", "joint"]["vs_base"]["subject_fidelity"]["n"] == joint_videos
    )  # each with its base video
    assert [(p["identity_step"], p["motion_step"]) for p in results["summary"]["tradeoff"]] == [
        (1, 1),
        (1, 2),
    ]
    md = (out / "results.md").read_text()
    for heading in (
        "Subject customization",
        "Motion customization",
        "Joint customization",
        "Identity vs motion",
        "Difference to the base model",
        "DreamVideo against each baseline",
        "Track MF against the oracle's motion fidelity",
    ):
        assert heading in md
    for name in ("plots/metrics_joint.png", "plots/tradeoff.png", "contact_joint.png", "results.json"):
        assert (out / name).is_file(), name

    # a second run recomputes nothing and reproduces the numbers
    again = bm.Benchmark(config, out, device="cpu", progress=False).run()
    assert again["stats"]["trained"] == 0 and again["stats"]["generated"] == 0
    assert again["rows"] == results["rows"]

    # a cell scored before the motion metrics existed gets them from its saved frames, without a new video
    cell_file = out / joint["cell"] / "cell.json"
    data = read_json(cell_file)
    for key in ("dynamic_degree", "flow_top5_mean"):
        del data["metrics"][key]
    del next(iter(data["by_reference"].values()))["track_motion_fidelity"]
    cell_file.write_text(json.dumps(data))
    completed = bm.Benchmark(config, out, device="cpu", progress=False).run()
    assert completed["stats"]["generated"] == 0 and completed["rows"] == results["rows"]

    # a lost video cell and an unfinished training run: only those are redone; the training run resumes from its
    # checkpoint and reproduces the same result, so videos made from it stay valid
    shutil.rmtree(out / joint["cell"])
    lora_subject = next(out.glob("train/subject/dog/lora-*"))
    before = read_json(lora_subject / "subject.json")
    (lora_subject / "subject.json").unlink()
    third = bm.Benchmark(config, out, device="cpu", progress=False).run()
    assert third["stats"]["trained"] == 1 and third["stats"]["generated"] == 1
    assert read_json(lora_subject / "subject.json")["losses"] == before["losses"]
    assert third["rows"] == results["rows"]


def test_a_video_shared_by_several_motions_is_scored_against_each(tiny_base, tiny_data, tiny_clip, tmp_path):
    """The base model's video of a motion prompt stands in every motion's row: its motion fidelity must be measured
    against that row's motion, not against whichever motion scored the video first."""
    from dreamvideo.toy import oracle
    from dreamvideo.video_io import write_video

    rise = tmp_path / "rise"  # a second motion: up instead of right
    rise.mkdir()
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for f in range(6):
        frames[f, 9 - f : 15 - f, 4:10] = 255
    write_video(frames, rise / "clip0.gif", fps=8)
    spec = tiny_config(tiny_base, tiny_data, tiny_clip) | {
        "methods": ["base"],
        "ablations": [],
        "tradeoff": None,
    }
    spec["motions"] = spec["motions"] + [{"name": "rise", "videos": str(rise)}]
    config = bm.BenchmarkConfig.from_dict(spec)
    out = tmp_path / "bench"
    runner = bm.Benchmark(config, out, device="cpu", progress=False)
    results = runner.run()
    rows = {r["motion"]: r for r in results["rows"] if r["case"] == "motion"}
    assert rows["slide"]["cell"] == rows["rise"]["cell"]  # one video ...
    video = bm.runner._load_strip(out / rows["slide"]["cell"] / "frames.png", config.sampling["num_frames"])
    masks = oracle.segment_foreground(video)
    for item in config.motions:  # ... scored against each motion
        expected = oracle.motion_fidelity(video, runner._motion_refs(item), masks)
        assert rows[item["name"]]["motion_fidelity"] == pytest.approx(expected)
    assert rows["slide"]["motion_fidelity"] != pytest.approx(rows["rise"]["motion_fidelity"])
    assert rows["slide"]["track_motion_fidelity"] != pytest.approx(rows["rise"]["track_motion_fidelity"])

    # a cell written before scores were kept per reference: its reference scores are recomputed from its frames
    cell_file = out / rows["rise"]["cell"] / "cell.json"
    data = read_json(cell_file)
    data["metrics"] |= {
        "motion_fidelity": 0.123,
        "track_motion_fidelity": 0.456,
    }  # scored for one motion only
    del data["by_reference"]
    cell_file.write_text(json.dumps(data))
    again = bm.Benchmark(config, out, device="cpu", progress=False).run()
    assert again["stats"]["generated"] == 0 and again["rows"] == results["rows"]


def test_config_errors_name_the_file_and_key(tmp_path, tiny_base, tiny_data, tiny_clip):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"methods": ["dreamvideo", "magic"]}))
    with pytest.raises(DreamVideoError, match="grid.json: methods: unknown 'magic'"):
        bm.BenchmarkConfig.from_file(path)
    path.write_text(json.dumps({"subjects": [{"name": "dog", "images": "nowhere"}]}))
    with pytest.raises(DreamVideoError, match="grid.json: subjects 'dog': .*nowhere not found"):
        bm.BenchmarkConfig.from_file(path)
    path.write_text(json.dumps({"motion_metrics": {"tracker": "raft"}}))
    with pytest.raises(DreamVideoError, match="grid.json: motion_metrics: tracker 'raft'"):
        bm.BenchmarkConfig.from_file(path)
    path.write_text(json.dumps({"motion_references": {"a cat runs": "cat.png"}}))
    with pytest.raises(DreamVideoError, match="motion_references: 'a cat runs' is not one of prompts"):
        bm.BenchmarkConfig.from_file(path)
    path.write_text(json.dumps({"sedes": [0]}))
    with pytest.raises(DreamVideoError, match="unknown key"):
        bm.BenchmarkConfig.from_file(path)


def test_presets_cover_every_method_and_ablation():
    quick, full = bm.quick_config(), bm.full_config()
    names = {e.name for e in quick.entries()}
    assert set(bm.builtin_methods()) <= names and set(bm.builtin_ablations()) <= names
    assert len(full.seeds) == 3 and len(full.subjects) > 1 and len(full.motions) > 1
    assert {e.name for e in full.entries()} == names - {"appearance-encoder"}
    # hyper-parameters are chosen on the validation subject and motion: no reported grid uses them
    from dreamvideo.toy import world

    for config in (quick, full):
        assert not {s["name"] for s in config.subjects} & set(world.VALIDATION_SUBJECTS)
        assert not {m["name"] for m in config.motions} & set(world.VALIDATION_MOTIONS)
    ablations = bm.builtin_ablations()
    assert ablations["no-motion-adapter"].motion is None and ablations["no-motion-adapter"].cases == (
        "joint",
    )
    assert ablations["no-identity-adapter"].subject.method == "textual-inversion"
    assert (
        ablations["serial"].subject.flag("placement")
        == ablations["serial"].motion.flag("placement")
        == "serial"
    )


def test_cli_runs_a_config(tiny_base, tiny_data, tiny_clip, tmp_path, capsys):
    from dreamvideo.cli import main

    cfg = tiny_config(tiny_base, tiny_data, tiny_clip) | {
        "methods": ["base"],
        "ablations": [],
        "tradeoff": None,
    }
    (tmp_path / "grid.json").write_text(json.dumps(cfg))
    assert (
        main(["benchmark", "--config", str(tmp_path / "grid.json"), "--out", str(tmp_path / "b"), "--quiet"])
        == 0
    )
    assert "base model" in capsys.readouterr().out
    assert read_json(tmp_path / "b" / "results.json")["stats"]["trained"] == 0


def test_seeds_flag_selects_a_piece_of_the_same_grid(tmp_path):
    from dreamvideo.cli import build_parser

    parse = build_parser().parse_args
    whole, out = bm.config_from_args(parse(["benchmark", "--full"]))
    piece, piece_out = bm.config_from_args(parse(["benchmark", "--full", "--seeds", "2", "0"]))
    assert out == piece_out == Path("benchmark_full") and piece.seeds == [2, 0] and whole.seeds == [0, 1, 2]
    assert {k: v for k, v in vars(piece).items() if k != "seeds"} == {
        k: v for k, v in vars(whole).items() if k != "seeds"
    }
    # a piece trains into the folders the whole grid would use, so a later run of the whole grid resumes it
    part = bm.builtin_methods()["dreamvideo"].subject
    item = whole.subjects[0]
    assert (
        bm.Benchmark(piece, tmp_path)._job("subject", part, item, 0)["folder"]
        == bm.Benchmark(whole, tmp_path)._job("subject", part, item, 0)["folder"]
    )


def test_merge_unites_pieces_of_one_grid_run_apart(tmp_path, capsys):
    from dreamvideo.benchmark.runner import _config_dict
    from dreamvideo.cli import main

    def piece(name, seeds, entries, value):
        cfg = _config_dict(bm.BenchmarkConfig(seeds=seeds, methods=["dreamvideo"], ablations=entries))
        rows = [
            {
                "entry": entry,
                "case": "subject",
                "group": {"base": "base", "serial": "ablation"}.get(entry, "method"),
                "seed": seed,
                "subject": "totem",
                "motion": None,
                "template": "a",
                "cell": f"videos/{entry}{seed}",
                "subject_fidelity": value[entry] + seed,
            }
            for seed in seeds
            for entry in ["base", "dreamvideo", *entries]
        ]
        # the base's video of a motion prompt stands in every motion's rows, scored against each motion
        rows += [
            rows[0] | {"case": "motion", "subject": None, "motion": m, "motion_fidelity": f}
            for m, f in (("pendulum", 0.1), ("spiral", 0.2))
        ]
        stats = {"trained": 1, "training_skipped": 0, "generated": len(rows), "generation_skipped": 0}
        results = {"config": cfg, "rows": rows, "training": {}, "stats": stats, "seconds": 1.0}
        (tmp_path / name).write_text(json.dumps(results))
        return tmp_path / name

    scores = {"base": 0.1, "dreamvideo": 0.5, "serial": 0.2}
    methods = piece("methods.json", [0, 1], [], scores)  # all seeds of the methods ...
    ablation = piece("ablation.json", [0], ["serial"], scores)  # ... and one seed of an ablation, run later
    results, entries = bm.merge_results([methods, ablation])
    assert results["config"]["seeds"] == [0, 1] and [e.name for e in entries][-1] == "serial"
    # seed 0's base and DreamVideo videos counted once; the base's shared motion video once per motion
    assert len(results["rows"]) == 2 * 2 + 2 + 1
    table = {(it["entry"], it["case"]): it for it in results["summary"]["table"]}
    assert table["dreamvideo", "subject"]["seeds"] == 2 and table["serial", "subject"]["seeds"] == 1
    assert table["serial", "subject"]["dreamvideo_minus"]["subject_fidelity"]["mean"] == pytest.approx(0.3)
    out = tmp_path / "merged"
    assert main(["benchmark", "--merge", str(methods), str(ablation), "--out", str(out)]) == 0
    assert "| serial adapters | subject | +0.300 ± " in (out / "results.md").read_text()
    assert read_json(out / "results.json")["merged_from"] == [str(methods), str(ablation)]
    later = piece("later.json", [2], [], scores)  # a merged report is itself a piece; it names its own pieces
    again = bm.merge_results([out / "results.json", later])[0]
    assert again["merged_from"] == [str(methods), str(ablation), str(later)] and again["config"]["seeds"] == [
        0,
        1,
        2,
    ]

    assert (
        results["merge_check"]["shared_rows"] == 4
        and "4 rows in more than one" in (out / "results.md").read_text()
    )
    noise = piece(
        "noise.json", [0], ["serial"], scores | {"serial": 0.2 + 1e-5}
    )  # remade elsewhere: float noise
    assert bm.merge_results([ablation, noise])[0]["merge_check"]["largest_difference"]["subject_fidelity"] > 0
    other = piece("other.json", [0], ["serial"], scores | {"serial": 0.3})  # the same video, other scores
    with pytest.raises(DreamVideoError, match="other.json: video videos/serial0 .* another subject_fidelity"):
        bm.merge_results([ablation, other])
    grid = read_json(methods)
    grid["config"]["training"]["ti_steps"] += 1
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    with pytest.raises(DreamVideoError, match="grid.json: config 'training' differs"):
        bm.merge_results([methods, tmp_path / "grid.json"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DreamVideoError, match="bad.json: not a benchmark's results.json"):
        bm.merge_results([methods, tmp_path / "bad.json"])
    assert main(["benchmark", "--merge", str(methods)]) == 2  # no --out: a clear error, nothing written
    assert "--merge needs --out" in capsys.readouterr().err


def test_difference_to_the_base_pairs_videos_of_the_same_prompt():
    def row(entry, seed, template, value, subject="dog"):
        return {
            "entry": entry,
            "case": "subject",
            "group": "base" if entry == "base" else "method",
            "seed": seed,
            "subject": subject,
            "motion": None,
            "template": template,
            "subject_fidelity": value,
        }

    rows = [
        row("base", 0, "a", 0.1),
        row("base", 0, "b", 0.3),
        row("base", 1, "a", 0.2),
        row("dreamvideo", 1, "a", 0.6),
        row("dreamvideo", 0, "b", 0.4),
        row("dreamvideo", 0, "a", 0.2),
        row("dreamvideo", 0, "a", float("nan"), subject="cat"),
    ]
    entries = [bm.builtin_methods()["base"], bm.builtin_methods()["dreamvideo"]]
    table = {it["entry"]: it for it in bm.summarize(rows, {}, entries)["table"] if it["case"] == "subject"}
    d = table["dreamvideo"]["vs_base"][
        "subject_fidelity"
    ]  # pairs: 0.2-0.1, 0.4-0.3, 0.6-0.2 (the NaN is left out)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.2)
    assert d["stderr"] == pytest.approx(np.std([0.1, 0.1, 0.4], ddof=1) / np.sqrt(3))
    # the two seed-0 pairs share one training (dog, seed 0): averaged to 0.1 before the standard error
    assert d["groups"] == 2 and d["stderr_by_group"] == pytest.approx(np.std([0.1, 0.4], ddof=1) / np.sqrt(2))
    assert table["base"]["vs_base"] == {}
    stats = {"trained": 0, "training_skipped": 0, "generated": 0, "generation_skipped": 0}
    results = {
        "config": vars(bm.quick_config()),
        "summary": bm.summarize(rows, {}, entries),
        "stats": stats,
        "seconds": 0,
    }
    assert "| dreamvideo | subject | +0.200 ± 0.150 | 3 / 2 |" in bm.format_markdown(results, entries)


def test_dreamvideo_against_each_baseline_and_track_agreement():
    def row(entry, template, value, track=None, oracle=None):
        r = {
            "entry": entry,
            "case": "subject",
            "group": {"base": "base", "serial": "ablation"}.get(entry, "method"),
            "seed": 0,
            "subject": "dog",
            "motion": None,
            "template": template,
            "subject_fidelity": value,
        }
        return r | ({"track_motion_fidelity": track, "motion_fidelity": oracle} if track is not None else {})

    rows = [
        row("base", "a", 0.1),
        row("dreamvideo", "a", 0.2, 0.1, 0.3),
        row("dreamvideo", "b", 0.4, 0.5, 0.2),
        row("lora", "a", 0.1, 0.2, 0.1),
        row("lora", "b", 0.5, 0.9, 0.9),
        row("serial", "a", 0.1),
        row("serial", "b", 0.2),
    ]
    entries = [bm.builtin_methods()[n] for n in ("base", "dreamvideo", "lora")] + [
        bm.builtin_ablations()["serial"]
    ]
    summary = bm.summarize(rows, {}, entries)
    lora = next(it for it in summary["table"] if it["entry"] == "lora")
    d = lora["dreamvideo_minus"]["subject_fidelity"]  # pairs by template: 0.2-0.1, 0.4-0.5
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.0)
    assert "dreamvideo_minus" not in next(it for it in summary["table"] if it["entry"] == "dreamvideo")
    serial = next(it for it in summary["table"] if it["entry"] == "serial")
    assert serial["dreamvideo_minus"]["subject_fidelity"]["mean"] == pytest.approx(0.15)  # 0.2-0.1, 0.4-0.2
    stats = {"trained": 0, "training_skipped": 0, "generated": 0, "generation_skipped": 0}
    results = {"config": vars(bm.quick_config()), "summary": summary, "stats": stats, "seconds": 0}
    text = bm.format_markdown(results, entries)
    ablations = text[
        text.index("## Ablations of DreamVideo") :
    ]  # the ablation's pair sits in its own section
    assert "| serial adapters | subject | +0.150 ± " in ablations
    assert (
        "| serial adapters |" not in text[: text.index("## Ablations of DreamVideo")].split("(paired)", 1)[1]
    )
    agree = summary["track_agreement"]
    assert agree["videos"] == 4
    assert agree["pearson"] == pytest.approx(np.corrcoef([0.1, 0.5, 0.2, 0.9], [0.3, 0.2, 0.1, 0.9])[0, 1])
    assert agree["spearman"] == pytest.approx(np.corrcoef([1, 3, 2, 4], [3, 2, 1, 4])[0, 1])


def test_method_settings_set_each_methods_learning_rates(tmp_path):
    config = bm.BenchmarkConfig(
        training={"ti_lr": 0.02, "identity_lr": 0.004},
        method_settings={"textual-inversion": {"ti_lr": 0.001}, "lora": {"subject_lr": 0.0005}},
    )
    runner, methods = bm.Benchmark(config, tmp_path), bm.builtin_methods()
    dv, _, _ = runner._subject_spec(methods["dreamvideo"].subject, "square", 0)
    ti, _, _ = runner._subject_spec(methods["textual-inversion"].subject, "square", 0)
    _, lora, _ = runner._subject_spec(methods["lora"].subject, "square", 0)
    assert (dv.textual_inversion.lr, dv.identity.lr) == (0.02, 0.004)
    assert ti.textual_inversion.lr == 0.001 and lora.lr == 0.0005
    no_identity = bm.builtin_ablations()["no-identity-adapter"].subject  # DreamVideo's textual inversion
    assert runner._subject_spec(no_identity, "square", 0)[0].textual_inversion.lr == 0.02
    item = bm.BenchmarkConfig().subjects[0]  # ... so it reuses DreamVideo's textual-inversion run
    ti_key = runner._job("subject", methods["dreamvideo"].subject, item, 0)["ti_key"]
    assert runner._job("subject", no_identity, item, 0)["ti_key"] == ti_key
