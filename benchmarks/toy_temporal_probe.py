"""Does a toy-base UNet use the other frames? A probe of temporal coherence (why the toy base's motion fails).

For ``--clips`` rendered training clips, noised at a few timesteps, it compares the denoising loss (epsilon MSE)
of the UNet on the whole clip with its loss when every frame is denoised alone (as a 1-frame video). A video
model whose temporal layers carry information across frames is clearly better on the whole clip, most of all
at high noise, where the layout is decided. It also gives the loss with the temporal layers skipped, and it
perturbs the noise of frame 0 and reports how much the prediction for the other frames moves, relative to frame
0's own change. ``word_use`` asks whether the UNet reads each kind of word of the caption: how much its loss rises
when the caption's motion, colour or background is swapped for another (a model that ignores its motion words scores
0 there, whatever its samples look like), and ``text_moves`` how far such a swap moves the text encoder's states, which
the UNet has to read it from (``pretrain.word_moves``).

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
from dreamvideo.toy.model import vae_pixels
from dreamvideo.toy.pretrain import word_moves
from dreamvideo.training import prediction_target

TIMESTEPS = (900, 600, 300, 100)
WORD_TIMESTEPS = (999, 900, 700, 500)


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


def probe_specs(clips: int = 16, anchor_jitter: float | None = None) -> list[world.ClipSpec]:
    """A fixed draw (seed 1) of ``clips`` training clips (``anchor_jitter``: as the model was trained)."""
    rng = np.random.default_rng(1)
    return [world.sample_pretraining_spec(rng, anchor_jitter) for _ in range(clips)]


@torch.no_grad()
def probe_latents(pipe, specs: list[world.ClipSpec], sample: bool = False) -> torch.Tensor:
    """VAE latents (clips, 4, frames, h, w) of the rendered clips (posterior modes, or samples as in training)."""
    frames = torch.from_numpy(np.stack([world.render_clip(s).frames for s in specs]))
    posterior = pipe.vae.encode(vae_pixels(frames.flatten(0, 1))).latent_dist
    latents = (posterior.sample() if sample else posterior.mode()) * pipe.vae.config.scaling_factor
    return latents.unflatten(0, frames.shape[:2]).transpose(1, 2)


@torch.no_grad()
def probe_inputs(pipe, clips: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents (clips, 4, frames, h, w) and caption features of ``clips`` training clips (fixed draw, seed 1)."""
    specs = probe_specs(clips)
    return probe_latents(pipe, specs), pipe.encode_text([world.caption(s) for s in specs])


@torch.no_grad()
def word_use(pipe, clips: int = 32, seed: int = 0, anchor_jitter: float | None = None) -> dict:
    """Relative rise of the model's own loss when one kind of caption word is swapped, at each of ``WORD_TIMESTEPS``.

    Args:
        pipe: a pipeline holding the model's UNet, text encoder and scheduler.
        clips: training clips (the same fixed draw for every model); each keeps its noise across the captions.
        anchor_jitter: the clips' sprite paths, as the model was trained (``pretrain --anchor-jitter``).
    """
    specs = probe_specs(clips, anchor_jitter)
    latents = probe_latents(pipe, specs)
    captions = {"true": [world.caption(s) for s in specs]}
    for i, word in enumerate(("motion", "color", "background")):
        rng = np.random.default_rng(seed + i)
        captions[word] = [world.caption(world.swap_word(s, word, rng)) for s in specs]
    text = {k: pipe.encode_text(v) for k, v in captions.items()}
    rows = {}
    for t in WORD_TIMESTEPS:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + t))
        ts = torch.full((clips,), t)
        noisy = pipe.scheduler.add_noise(latents, noise, ts)
        target = prediction_target(pipe.scheduler, latents, noise, ts)
        loss = {
            k: F.mse_loss(pipe.unet(noisy, ts, encoder_hidden_states=e).sample, target).item()
            for k, e in text.items()
        }
        rows[t] = {k: loss[k] / loss["true"] - 1 for k in ("motion", "color", "background")}
    return rows


@torch.no_grad()
def text_moves(pipe, captions: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean ``pretrain.word_moves`` of the pipeline's text encoder when one word of each kind is swapped."""
    rng = np.random.default_rng(seed)
    specs = [world.sample_pretraining_spec(rng) for _ in range(captions)]
    moves = {}
    for kind in world.WORD_KINDS:
        other = [world.swap_word(s, kind, rng) for s in specs]
        ids, other_ids = (
            pipe.tokenizer(
                [world.caption(s) for s in group],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids
            for group in (specs, other)
        )
        states, swapped = pipe.text_encoder(ids)[0], pipe.text_encoder(other_ids)[0]
        moves[kind] = word_moves(states, swapped, ids, other_ids).mean().item()
    return moves


def model_pipe(source: str):
    """The shipped toy pipeline with the UNet, scheduler and (when there is one) text encoder of ``source``.

    ``source``: 'toy', a base-model folder (all of it or just ``unet/``, ``scheduler/``, ``text_encoder/``), or a UNet
    safetensors file of the toy config.
    """
    from transformers import CLIPTextModel

    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained("toy")
    if source == "toy":
        return pipe
    folder = Path(source)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors" if folder.is_dir() else folder
    pipe.unet.load_state_dict(load_safetensors(path)[0])
    if folder.is_dir():
        pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        if (folder / "text_encoder").is_dir():
            pipe.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    return pipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--unet",
        nargs="+",
        default=["toy"],
        help="'toy', base-model folders (their unet/, scheduler/, text_encoder/), or UNet safetensors of the toy config",
    )
    p.add_argument("--clips", type=int, default=16)
    p.add_argument(
        "--words", action="store_true", help="also measure the use of motion/colour/background words"
    )
    p.add_argument(
        "--anchor-jitter",
        type=float,
        help="word use on clips drawn as `pretrain --anchor-jitter PX` draws them",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    results = {}
    for source in args.unet:
        pipe = model_pipe(source)
        results[source] = {
            "temporal": probe(pipe.unet.eval(), *probe_inputs(pipe, args.clips), pipe.scheduler)
        }
        for t, row in results[source]["temporal"].items():
            print(source, f"t={t}", {k: round(v, 4) for k, v in row.items()})
        if args.words:
            results[source]["text_moves"] = text_moves(pipe)
            print(
                source,
                "text states moved by a swapped word:",
                {k: f"{v:.0%}" for k, v in results[source]["text_moves"].items()},
            )
            results[source]["word_use"] = word_use(pipe, 2 * args.clips, anchor_jitter=args.anchor_jitter)
            for t, row in results[source]["word_use"].items():
                print(source, f"t={t} loss rise when swapped:", {k: f"{v:+.1%}" for k, v in row.items()})
    write_json(
        {"clips": args.clips, "timesteps": TIMESTEPS, "word_timesteps": WORD_TIMESTEPS, "results": results},
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
