"""Two CPU processes under ``accelerate launch`` (gloo): learn-motion, resume and generate, tiny model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config

from dreamvideo.fileio import load_safetensors, read_json
from dreamvideo.pipeline import DreamVideoPipeline

# Runs the real CLI in each process; a spy keeps each process's trained adapter to compare the replicas.
WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    from dreamvideo import adapters as ad
    from dreamvideo.cli import main
    from dreamvideo.fileio import save_safetensors
    from dreamvideo.methods.dreamvideo_motion import DreamVideoMotion

    real = DreamVideoMotion.learn

    def spy(self, videos, out, *args, **kwargs):
        result = real(self, videos, out, *args, **kwargs)
        tensors = ad.adapter_state_dict(self.pipe.unet, "motion")
        save_safetensors(tensors, Path(out).parent / f"{Path(out).name}.rank{os.environ['RANK']}.safetensors")
        return result

    DreamVideoMotion.learn = spy
    base, videos, root = sys.argv[1:4]
    common = ["--base", base, "--videos", videos, "--num-frames", "4", "--batch-size", "1", "--lr", "1e-2",
              "--checkpoint-every", "2", "--warmup-steps", "0", "--device", "cpu", "--quiet"]
    runs = [
        ["learn-motion", *common, "--out", f"{root}/full", "--steps", "4"],
        ["learn-motion", *common, "--out", f"{root}/cut", "--steps", "2"],
        ["learn-motion", *common, "--out", f"{root}/cut", "--steps", "4", "--resume"],
        ["generate", "--base", base, "--motion", f"{root}/full", "--prompt", "a red star", "a blue dog",
         "--frames", "2", "--steps", "2", "--out", f"{root}/video.gif", "--device", "cpu", "--quiet"],
        ["benchmark", "--config", f"{root}/grid.json", "--out", f"{root}/bench", "--device", "cpu", "--quiet"],
    ]
    for argv in runs:
        if main(argv) != 0:
            sys.exit(1)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grid(tiny_base, tiny_data, tiny_clip) -> dict:
    """Two methods and a trade-off grid: five trainings and several generation groups to split."""
    return tiny_config(tiny_base, tiny_data, tiny_clip) | {"ablations": []}


@pytest.fixture(scope="module")
def launched(tiny_base, tiny_data, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "grid.json").write_text(json.dumps(grid(tiny_base, tiny_data, tiny_clip)))
    worker = root / "worker.py"
    worker.write_text(WORKER)
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(worker),
        str(tiny_base),
        str(tiny_data["motion"]),
        str(root),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    return root, result.stdout


def test_both_processes_train_the_same_adapter_and_only_the_main_one_writes(launched):
    root, _ = launched
    rank0 = load_safetensors(root / "full.rank0.safetensors")[0]
    rank1 = load_safetensors(root / "full.rank1.safetensors")[0]
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(k.endswith(".up.weight") and v.abs().sum() > 0 for k, v in rank0.items())  # zero-init moved
    saved = load_safetensors(root / "full" / "motion_adapter.safetensors")[0]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    info = read_json(root / "full" / "motion.json")
    assert info["training"]["steps_done"] == 4 and len(info["losses"]) == 4
    assert not any(
        p.name.startswith(".final") for p in (root / "full").iterdir()
    )  # staging folders cleaned up
    opt = load_safetensors(
        root / "full" / "checkpoints" / "motion_adapter" / "step-000004" / "optimizer.safetensors"
    )
    assert "generator_state.rank1" in opt[0]  # every process's batch stream is saved for exact resume


def test_resume_with_two_processes_matches_the_uninterrupted_run(launched):
    root, _ = launched
    a = load_safetensors(root / "full" / "motion_adapter.safetensors")[0]
    b = load_safetensors(root / "cut" / "motion_adapter.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        read_json(root / "cut" / "motion.json")["losses"]
        == read_json(root / "full" / "motion.json")["losses"]
    )


def test_generate_splits_prompts_between_processes_and_the_result_loads(launched, tiny_base):
    root, stdout = launched
    assert (root / "video_00.gif").is_file() and (root / "video_01.gif").is_file()
    # each prompt generated once, not once per process (counted by substring: the processes' lines may interleave)
    assert stdout.count("' -> ") == 2
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
    pipe.load_motion(root / "full")
    frames = pipe("a red star", num_frames=2, num_inference_steps=2, progress=False).frames[0]
    assert frames.shape == (2, 16, 16, 3)


def test_benchmark_splits_trainings_and_videos_between_processes(
    launched, tiny_base, tiny_data, tiny_clip, tmp_path
):
    from dreamvideo import benchmark as bm

    root, stdout = launched
    assert stdout.count("[benchmark] training ") == 4  # dreamvideo and lora, subject and motion: each once
    results = read_json(root / "bench" / "results.json")
    assert stdout.count("[benchmark] ") - 4 == len({r["cell"] for r in results["rows"]})  # each video once
    # the counts in results.json cover both processes' shares
    assert results["stats"]["trained"] == 4
    assert results["stats"]["generated"] == len({r["cell"] for r in results["rows"]})
    single = bm.Benchmark(
        bm.BenchmarkConfig.from_dict(grid(tiny_base, tiny_data, tiny_clip)),
        tmp_path / "one",
        device="cpu",
        progress=False,
    ).run()
    assert [r["cell"] for r in single["rows"]] == [r["cell"] for r in results["rows"]]
    for a, b in zip(single["rows"], results["rows"], strict=True):  # same numbers as a single process
        assert all(a[k] == pytest.approx(b[k], abs=1e-4) for k in a if isinstance(a[k], float))


def test_two_process_training_lowers_the_loss_on_its_videos(launched, tiny_base, tiny_data):
    from dreamvideo import adapters as ad
    from dreamvideo.methods.motion import MotionBatches, MotionSettings, load_motion_data
    from dreamvideo.training import diffusion_loss

    root, _ = launched
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
    pipe.load_motion(root / "full")
    settings = MotionSettings(num_frames=4)
    batches = MotionBatches.encode(pipe, load_motion_data(tiny_data["motion"], 16, settings), settings)

    def held_loss(
        enabled: bool,
    ) -> float:  # the same 16 clips, noises and timesteps with and without the adapter
        ad.enable_adapter(pipe.unet, "motion", enabled)
        generator, total = torch.Generator().manual_seed(0), 0.0
        with torch.no_grad():
            for _ in range(16):
                x, text, embeds = batches.sample(1, generator)
                ad.set_adapter_condition(pipe.unet, "motion", embeds, 1.0)
                total += diffusion_loss(pipe.unet, pipe.scheduler, x, text, generator).item()
        return total / 16

    assert held_loss(True) < 0.95 * held_loss(False)  # measured: 0.89 vs 1.11
