"""The main sub-commands: learn-subject, learn-motion, generate, info and demo."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dreamvideo.fileio import DreamVideoError

DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"


def _device(name: str | None) -> torch.device:
    from dreamvideo.distributed import local_device

    return local_device(name)  # under accelerate launch: this process's GPU


def _load_pipe(args: argparse.Namespace):
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained(
        args.base, image_encoder=getattr(args, "image_encoder", None), device=_device(args.device)
    )
    if getattr(args, "compile", False):
        pipe.unet.compile()  # in place: module names and adapter attachment unchanged; traced at the first call
    return pipe


def _stage(prefix: str, args: argparse.Namespace):
    from dreamvideo.training import StageConfig

    return StageConfig(
        steps=getattr(args, f"{prefix}steps"),
        lr=getattr(args, f"{prefix}lr"),
        batch_size=getattr(args, f"{prefix}batch_size"),
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        offset_noise=args.offset_noise,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def _common_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="toy", help="diffusers text-to-video folder, hub id, or 'toy' (default)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a finished result in --out")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, default=100, help="save a resumable checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first step; helps on GPUs)")
    p.add_argument("--hidden-ratio", type=float, default=0.5, help="adapter bottleneck width / block width")
    p.add_argument("--placement", choices=["parallel", "serial"], default="parallel")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--preview-every", type=int, default=0,
                   help="write a preview video to OUT/previews/ every N steps (default 0: none; dreamvideo method)")
    p.add_argument("--preview-prompt", help="prompt of the previews (default: the training caption)")
    p.add_argument("--preview-steps", type=int, default=25, help="DDIM steps of each preview")
    p.add_argument("--preview-frames", type=int, default=8)


def _preview(args: argparse.Namespace):
    from dreamvideo.stages import PreviewSettings

    if args.preview_every < 0:
        raise DreamVideoError(f"--preview-every must be >= 0, got {args.preview_every}")
    if args.preview_every and args.method != "dreamvideo":
        raise DreamVideoError(f"--preview-every is supported by --method dreamvideo only, not {args.method}")
    return PreviewSettings(every=args.preview_every, prompt=args.preview_prompt, num_frames=args.preview_frames,
                           steps=args.preview_steps, seed=args.seed)


# ---------------------------------------------------------------------------------------------- learn-subject
def cmd_learn_subject(args: argparse.Namespace) -> int:
    from dreamvideo import adapters as ad
    from dreamvideo.stages import SubjectSettings, learn_subject

    settings = SubjectSettings(
        token=args.token,
        init_word=args.init_word,
        caption=args.caption,
        resolution=args.resolution,
        textual_inversion=_stage("ti_", args),
        identity=_stage("adapter_", args),
        use_masks=not args.no_masks,
        identity_adapter=ad.identity_adapter_config(
            sites=tuple(args.adapter_sites), hidden_ratio=args.hidden_ratio, placement=args.placement
        ),
        train_token=not args.no_textual_inversion,
    )
    preview = _preview(args)
    _check_output_early(args.out, "subject.json", args.overwrite, args.resume)
    pipe = _load_pipe(args)
    if args.method != "dreamvideo":  # a baseline: its one training stage takes the --adapter-* settings
        from dreamvideo import baselines
        from dreamvideo.fileio import read_json

        out = baselines.learn_subject(args.method, pipe, args.images, args.out, settings, _stage("adapter_", args),
                                      masks=args.masks, overwrite=args.overwrite, resume=args.resume,
                                      progress=not args.quiet)
        words = read_json(out / "subject.json").get("token") or args.init_word
        print(f"subject ({args.method}) written to {out} (use '{words}' in prompts)")
        return 0
    out = learn_subject(pipe, args.images, args.out, settings, masks=args.masks, overwrite=args.overwrite,
                        resume=args.resume, progress=not args.quiet, skip_identity=args.no_identity_adapter,
                        preview=preview)
    print(f"subject written to {out} (use '{args.token}' in prompts)")
    return 0


def _check_output_early(out: Path, marker: str, overwrite: bool, resume: bool) -> None:
    """Fail before loading any model when the output folder would be refused anyway."""
    if (out / marker).is_file() and not (overwrite or resume):
        raise DreamVideoError(f"{out}: already holds a finished result ({marker}); pass --overwrite to replace it")


# ---------------------------------------------------------------------------------------------- learn-motion
def cmd_learn_motion(args: argparse.Namespace) -> int:
    from dreamvideo import adapters as ad
    from dreamvideo.stages import MotionSettings, learn_motion

    preview = _preview(args)
    _check_output_early(args.out, "motion.json", args.overwrite, args.resume)
    pipe = _load_pipe(args)
    guidance = not args.no_appearance_guidance
    settings = MotionSettings(
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        resolution=args.resolution,
        stage=_stage("", args),
        caption_dropout=args.caption_dropout,
        appearance_dropout=args.appearance_dropout,
        appearance_guidance=guidance,
        motion_adapter=ad.motion_adapter_config(
            pipe.condition_dim if guidance else None,
            sites=tuple(args.adapter_sites),
            hidden_ratio=args.hidden_ratio,
            placement=args.placement,
        ),
        short_videos=args.short_videos,
    )
    if args.method != "dreamvideo":
        from dreamvideo import baselines

        out = baselines.learn_motion(args.method, pipe, args.videos, args.out, settings, captions=args.caption,
                                     overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
        print(f"motion ({args.method}) written to {out}")
        return 0
    out = learn_motion(pipe, args.videos, args.out, settings, captions=args.caption, overwrite=args.overwrite,
                       resume=args.resume, progress=not args.quiet, preview=preview)
    print(f"motion written to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from dreamvideo.data import load_motion_videos
    from dreamvideo.video_io import write_frames_png, write_video

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise DreamVideoError(f"{out}: --out must end in .mp4 or .gif")
    appearance = None
    if args.appearance_image:
        try:
            appearance = Image.open(args.appearance_image).convert("RGB")
        except OSError as err:
            raise DreamVideoError(f"{args.appearance_image}: cannot read image ({err})") from err
    pipe = _load_pipe(args)
    if args.subject:
        token = pipe.load_subject(args.subject, step=args.subject_step, scale=args.subject_scale)
        if token not in " ".join(args.prompt):
            print(f"note: the prompt does not contain the subject token '{token}'")
    if args.motion:
        pipe.load_motion(args.motion, step=args.motion_step, scale=args.motion_scale)
    from dreamvideo.reference.cli import apply_generate_arguments  # appearance encoder (section 9)

    reference = apply_generate_arguments(pipe, args)
    init_video = None
    if args.init_video:
        size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        video = load_motion_videos(args.init_video, args.height or size).videos[0]
        init_video = video[: args.frames]
    from dreamvideo.distributed import shard

    for i, prompt in shard(list(enumerate(args.prompt))):  # under accelerate launch: each process some prompts
        generator = torch.Generator().manual_seed(args.seed + i)
        result = pipe(
            prompt,
            negative_prompt=args.negative_prompt,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            guidance_rescale=args.guidance_rescale,
            offset_noise=args.offset_noise,
            appearance_image=appearance,
            appearance_strength=args.appearance_strength,
            appearance_strength_uncond=args.appearance_strength_uncond,
            generator=generator,
            init_video=init_video,
            init_strength=args.init_strength,
            progress=not args.quiet,
            **reference,
        )
        target = out if len(args.prompt) == 1 else out.with_name(f"{out.stem}_{i:02d}{out.suffix}")
        frames = result.frames[0]
        write_video(frames, target, fps=args.fps)
        other = target.with_suffix(".gif" if target.suffix.lower() == ".mp4" else ".mp4")
        write_video(frames, other, fps=args.fps)
        if args.png_frames:
            write_frames_png(frames, target.with_suffix(""))
        print(f"{prompt!r} -> {target} (+ {other.name})")
    return 0


# ---------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from dreamvideo import adapters as ad
    from dreamvideo.base import MODELSCOPE_IMAGE_EMBED_DIM, modelscope_unet_on_meta

    if args.base is None:
        unet, cond_dim, name = modelscope_unet_on_meta(), MODELSCOPE_IMAGE_EMBED_DIM, "ModelScopeT2V-1.7B (meta device)"
    else:
        pipe = _load_pipe(args)
        unet, cond_dim, name = pipe.unet, pipe.condition_dim, pipe.base_name
    print(f"base: {name}")
    print(f"UNet parameters: {sum(p.numel() for p in unet.parameters()):,}")
    for config in (ad.identity_adapter_config(), ad.motion_adapter_config(cond_dim)):
        blocks = ad.find_transformer_blocks(unet, config.target)
        widths = sorted({b.norm1.normalized_shape[0] for _, b in blocks})
        ad.attach_adapter(unet, config)
        counted = ad.count_adapter_parameters(unet, config.name)
        expected = ad.expected_adapter_parameters(unet, config)
        ad.detach_adapter(unet, config.name)
        print(
            f"{config.name} adapter: {len(blocks)} {config.target} blocks x {len(config.sites)} sites "
            f"({', '.join(config.sites)}), widths {widths}, condition dim {config.condition_dim}: "
            f"{counted:,} trainable parameters (formula d^2 + 1.5d [+ cond*d + d] per site: {expected:,})"
        )
    from dreamvideo.reference.cli import print_encoder_info

    print_encoder_info(unet)
    return 0


def _method_argument(p: argparse.ArgumentParser, kind: str) -> None:
    from dreamvideo import baselines

    names = baselines.subject_methods() if kind == "subject" else baselines.motion_methods()
    extra = " (other methods train one stage with the --adapter-* settings)" if kind == "subject" else ""
    p.add_argument("--method", default="dreamvideo", choices=names,
                   help=f"learning method: DreamVideo or a baseline of the paper's comparisons{extra}")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("learn-subject", help="learn a subject (token + identity adapter) from a few photos")
    p.add_argument("--images", required=True, type=Path, help="folder of photos (or with images/ and masks/)")
    p.add_argument("--masks", type=Path, help="folder of subject masks matched by file name (optional)")
    p.add_argument("--no-masks", action="store_true", help="ignore masks even if present")
    p.add_argument("--token", default="<sks>", help="placeholder word to learn (default <sks>)")
    p.add_argument("--init-word", required=True, help="one-token class word, e.g. dog")
    p.add_argument("--caption", default="a {token} {word}", help="caption template (default 'a {token} {word}')")
    p.add_argument("--resolution", type=int, help="training image size (default: the base's native size)")
    p.add_argument("--ti-steps", type=int, default=3000, help="textual inversion steps (authors: 1500-3000)")
    p.add_argument("--ti-lr", type=float, default=1e-4)
    p.add_argument("--ti-batch-size", type=int, default=4)
    p.add_argument("--adapter-steps", type=int, default=1000, help="identity adapter steps (authors: 500-1000)")
    p.add_argument("--adapter-lr", type=float, default=1e-5)
    p.add_argument("--adapter-batch-size", type=int, default=4)
    p.add_argument("--adapter-sites", nargs="+", default=["attn2"], choices=["attn1", "attn2", "ff"],
                   help="spatial sub-layers that get the identity adapter (paper: attn2, the cross-attention)")
    p.add_argument("--no-textual-inversion", action="store_true", help="ablation: keep the init word's embedding")
    p.add_argument("--no-identity-adapter", action="store_true", help="ablation / baseline: token only")
    _method_argument(p, "subject")
    _common_training(p)
    p.set_defaults(func=cmd_learn_subject)

    p = subparsers.add_parser("learn-motion", help="learn a motion adapter from a few videos")
    p.add_argument("--videos", required=True, type=Path, help="folder of videos (optional captions.json) or one video")
    p.add_argument("--caption", help="caption for every video (default: captions.json or the file names)")
    p.add_argument("--image-encoder", type=Path, help="CLIPVisionModelWithProjection folder (default: base/image_encoder)")
    p.add_argument("--no-appearance-guidance", action="store_true", help="train without appearance guidance")
    p.add_argument("--num-frames", type=int, default=16, help="frames per training clip (authors: 32)")
    p.add_argument("--frame-stride", type=int, default=1, help="take every n-th frame (choose for ~8 fps)")
    p.add_argument("--short-videos", choices=["loop", "error"], default="loop",
                   help="videos shorter than a clip: play them ping-pong (loop) or refuse them (error)")
    p.add_argument("--resolution", type=int, help="training clip size (default: the base's native size)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (authors: 1000-3000)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--caption-dropout", type=float, default=0.5)
    p.add_argument("--appearance-dropout", type=float, default=0.5)
    p.add_argument("--adapter-sites", nargs="+", default=["attn1", "attn2", "ff"], choices=["attn1", "attn2", "ff"])
    _method_argument(p, "motion")
    _common_training(p)
    p.set_defaults(func=cmd_learn_motion)

    p = subparsers.add_parser("generate", help="generate videos with a subject, a motion, both, or neither")
    p.add_argument("--base", default="toy")
    p.add_argument("--subject", type=Path, help="subject folder from learn-subject")
    p.add_argument("--subject-step", type=int, help="use the identity adapter checkpoint of this step")
    p.add_argument("--subject-scale", type=float, default=1.0)
    p.add_argument("--motion", type=Path, help="motion folder from learn-motion")
    p.add_argument("--motion-step", type=int, help="use the motion adapter checkpoint of this step")
    p.add_argument("--motion-scale", type=float, default=1.0)
    p.add_argument("--prompt", required=True, nargs="+", help="one or more prompts")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", required=True, type=Path, help="video file (.mp4 or .gif; the other format is written too)")
    p.add_argument("--png-frames", action="store_true", help="also write the frames as PNG files")
    p.add_argument("--image-encoder", type=Path)
    p.add_argument("--appearance-image", type=Path, help="reference image for appearance guidance")
    p.add_argument("--appearance-strength", type=float, default=1.0, help="lam_c, conditional branch")
    p.add_argument("--appearance-strength-uncond", type=float, default=1.0, help="lam_u, unconditional branch")
    p.add_argument("--guidance-scale", type=float, default=9.0)
    p.add_argument(
        "--guidance-rescale",
        type=float,
        help="rescale of the guided prediction, 0-1 (Lin et al.); default: 0.7 on zero-terminal-SNR bases, else 0",
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument(
        "--offset-noise", type=float, default=0.1, help="offset noise added to the starting noise (authors: 0.1)"
    )
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-video", type=Path, help="training video whose DDIM-inverted latents start sampling")
    p.add_argument("--init-strength", type=float, default=0.0, help="mix of inverted latents, 0-0.5")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first step; helps on GPUs)")
    p.add_argument("--quiet", action="store_true")
    from dreamvideo.reference.cli import add_generate_arguments

    add_generate_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("info", help="adapter sites and trainable parameter counts of a base model")
    p.add_argument("--base", default=None, help="a base model; default: the full ModelScope-1.7B architecture")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_info)
