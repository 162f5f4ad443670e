"""Rebuild a base-model folder from the files `toy_base_vzero.sh` brings back from a GPU arm.

    python benchmarks/gpu/unpack_arm.py FILES_AT ARM OUT_FOLDER

OUT_FOLDER gets ``unet/`` (the arm's EMA weights, the toy config), ``scheduler/`` (the config the arm trained with)
and ``text_encoder/`` when the arm trained one; CLIP and the VAE come from the shipped model when it is loaded with
``--init-from`` or the probes (a UNet-only folder).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from diffusers import DDIMScheduler

from dreamvideo.toy.model import TOY_MODEL_DIR


def main(argv: list[str]) -> int:
    files, arm, out = Path(argv[0]), argv[1], Path(argv[2])
    report = json.loads((files / f"{arm}_report.json").read_text())
    (out / "unet").mkdir(parents=True, exist_ok=True)
    shutil.copy(TOY_MODEL_DIR / "unet/config.json", out / "unet/config.json")
    shutil.copy(files / f"{arm}_unet.safetensors", out / "unet/diffusion_pytorch_model.safetensors")
    DDIMScheduler.from_config(report["scheduler"]).save_pretrained(out / "scheduler")
    if (files / f"{arm}_text_encoder.safetensors").is_file():
        (out / "text_encoder").mkdir(exist_ok=True)
        shutil.copy(TOY_MODEL_DIR / "text_encoder/config.json", out / "text_encoder/config.json")
        shutil.copy(files / f"{arm}_text_encoder.safetensors", out / "text_encoder/model.safetensors")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"{out}: step {report['step']}, quality {(report['quality'] or {}).get('accuracy')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
