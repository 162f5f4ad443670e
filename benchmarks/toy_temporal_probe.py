"""Does a toy-base UNet use the other frames? A probe of temporal coherence (why the toy base's motion fails).

For ``--clips`` rendered training clips, noised at a few timesteps, it compares the denoising loss (epsilon MSE)
of the UNet on the whole clip with its loss when every frame is denoised alone (as a 1-frame video). A video
model whose temporal layers carry information across frames is clearly better on the whole clip, most of all
at high noise, where the layout is decided. It also gives the loss with the temporal layers skipped, and it
perturbs the noise of frame 0 and reports how much the prediction for the other frames moves, relative to frame
0's own change.

    python benchmarks/toy_temporal_probe.py --unet toy path/to/other/unet.safetensors --out probe.json
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from dreamvideo.fileio import load_safetensors, write_json
from dreamvideo.toy import world
from dreamvideo.toy.model import TOY_MODEL_DIR, toy_unet, vae_pixels

TIMESTEPS = (900, 600, 300, 100)


@contextmanager
def skip_temporal_layers(unet) -> Iterator[None]:
    """Make every temporal convolution and temporal transformer return its input unchanged."""

    def identity(module, inputs, output):
        return (inputs[0],) if isinstance(output, tuple) else inputs[0]

    temporal = [
        m for m in unet.modules() if type(m).__name__ in ("TemporalConvLayer", "TransformerTemporalModel")
    ]
    hooks = [m.register_forward_hook(identity) for m in temporal]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def probe(unet, latents: torch.Tensor, text: torch.Tensor, scheduler, seed: int = 0) -> dict:
    """Loss on whole clips vs frames alone, and cross-frame sensitivity, at each of ``TIMESTEPS``.

    The loss is the model's own training loss: epsilon or velocity MSE, as its scheduler says.
    """
    b, _, f = latents.shape[:3]
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    rows = {}
    for t in TIMESTEPS:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + t))
        ts = torch.full((b,), t)
        noisy = scheduler.add_noise(latents, noise, ts)
        whole = unet(noisy, ts, encoder_hidden_states=text).sample
        with skip_temporal_layers(unet):
            spatial_only = unet(noisy, ts, encoder_hidden_states=text).sample
        frames = noisy.transpose(1, 2).flatten(0, 1)[:, :, None]  # (b*f, 4, 1, h, w)
        alone = unet(
            frames, ts.repeat_interleave(f), encoder_hidden_states=text.repeat_interleave(f, 0)
        ).sample
        alone = alone[:, :, 0].unflatten(0, (b, f)).transpose(1, 2)
        bumped = noisy.clone()
        bumped[:, :, 0] += torch.randn(
            bumped[:, :, 0].shape, generator=torch.Generator().manual_seed(seed + t + 1)
        )
        change = (
            (unet(bumped, ts, encoder_hidden_states=text).sample - whole).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
        )
        target = scheduler.get_velocity(latents, noise, ts) if v_prediction else noise
        rows[t] = {
            "loss_whole_clip": F.mse_loss(whole, target).item(),
            "loss_frames_alone": F.mse_loss(alone, target).item(),
            "loss_without_temporal_layers": F.mse_loss(spatial_only, target).item(),
            "other_frames_change_vs_frame0": (change[1:].mean() / change[0]).item(),
        }
    return rows


@torch.no_grad()
def probe_inputs(pipe, clips: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents (clips, 4, frames, h, w) and caption features of ``clips`` training clips (fixed draw, seed 1)."""
    rng = np.random.default_rng(1)
    specs = [world.sample_pretraining_spec(rng) for _ in range(clips)]
    frames = torch.from_numpy(np.stack([world.render_clip(s).frames for s in specs]))
    latents = pipe.vae.encode(vae_pixels(frames.flatten(0, 1))).latent_dist.mode() * pipe.vae.config.scaling_factor
    latents = latents.unflatten(0, frames.shape[:2]).transpose(1, 2)
    return latents, pipe.encode_prompt([world.caption(s) for s in specs])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--unet",
        nargs="+",
        default=["toy"],
        help="'toy', base-model folders (their unet/ and scheduler/), or UNet safetensors files of the toy config",
    )
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained(
        "toy"
    )  # VAE, text encoder, tokenizer, scheduler of the shipped model
    latents, text = probe_inputs(pipe, args.clips)
    results = {}
    for source in args.unet:
        folder = TOY_MODEL_DIR if source == "toy" else Path(source)
        path = folder / "unet" / "diffusion_pytorch_model.safetensors" if folder.is_dir() else folder
        scheduler = (
            DDIMScheduler.from_pretrained(folder, subfolder="scheduler") if folder.is_dir() else pipe.scheduler
        )
        unet = toy_unet()
        unet.load_state_dict(load_safetensors(path)[0])
        results[source] = probe(unet.eval(), latents, text, scheduler)
        for t, row in results[source].items():
            print(source, f"t={t}", {k: round(v, 4) for k, v in row.items()})
    write_json({"clips": args.clips, "timesteps": TIMESTEPS, "results": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
