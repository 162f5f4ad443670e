"""Pack one GPU arm of `toy_base_vzero.sh` into the few files that come back from the device machine.

    python benchmarks/gpu/pack_arm.py ARM OUT

Reads /tmp/arm_ARM (the run), /tmp/q_ARM (quality bar) and /tmp/w_ARM.json (probes); writes OUT/ARM_report.json,
OUT/ARM_unet.safetensors, OUT/ARM_text_encoder.safetensors and OUT/ARM_samples.png.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def read(path: str | Path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def main(argv: list[str]) -> int:
    arm, out = argv[0], Path(argv[1])
    run = Path(f"/tmp/arm_{arm}")
    newest = sorted((run / "checkpoints/unet").glob("step-*"))[-1]  # the Trainer's newest checkpoint
    model, state = run / "model", read(newest / "trainer.json")
    log = read(run / "train_log.json") or {}
    report = {
        "arm": arm,
        "step": state["step"],
        "seconds": state["seconds"],
        "losses": state["losses"][::10],
        "args": log.get("args"),
        "scheduler": read(model / "scheduler/scheduler_config.json"),
        "quality": read(f"/tmp/q_{arm}/quality.json"),
        "probe": read(f"/tmp/w_{arm}.json"),
    }
    (out / f"{arm}_report.json").write_text(json.dumps(report))
    shutil.copy(model / "unet/diffusion_pytorch_model.safetensors", out / f"{arm}_unet.safetensors")
    # always: a text phase or the starting model may have changed it even when the UNet stage kept it frozen
    shutil.copy(model / "text_encoder/model.safetensors", out / f"{arm}_text_encoder.safetensors")
    if Path(f"/tmp/q_{arm}/held_out_samples.png").is_file():
        shutil.copy(f"/tmp/q_{arm}/held_out_samples.png", out / f"{arm}_samples.png")
    print(arm, "step", state["step"], "quality", (report["quality"] or {}).get("accuracy"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
