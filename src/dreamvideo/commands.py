"""The main sub-commands: learn-subject, learn-motion, generate and info.

``learn-subject`` and ``learn-motion`` turn their flags into a ``SubjectSettings`` / ``MotionSettings`` (flag names
follow the fields: ``--identity-steps`` is ``SubjectSettings.identity.steps``) and hand them, with ``--method``, to
:func:`dreamvideo.methods.learn_subject` / :func:`~dreamvideo.methods.learn_motion`: one path for every method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dreamvideo import validate as v
from dreamvideo.artifacts import MOTION_FILE, SUBJECT_FILE
from dreamvideo.cli_support import DEVICE_HELP, check_output_early, load_pipe
from dreamvideo.fileio import DreamVideoError, read_json


def _stage(prefix: str, args: argparse.Namespace):
    """The :class:`~dreamvideo.training.StageConfig` of the flags ``--<prefix>steps``, ``-lr``, ``-batch-size``
    and the common training flags."""
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
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
    )


def _common_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="toy", help="diffusers text-to-video folder, hub id, or 'toy' (default)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a finished result in --out")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument(
        "--checkpoint-every", type=v.POSITIVE, default=100, help="save a resumable checkpoint every N steps"
    )
    p.add_argument("--seed", type=v.NON_NEGATIVE, default=0)
    p.add_argument("--offset-noise", type=v.float_range(0.0, 10.0), default=0.1)
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="autocast of the forward pass; auto (the authors'): fp16 with a gradient scaler on GPUs, none on CPUs",
    )
    p.add_argument(
        "--warmup-steps",
        type=v.NON_NEGATIVE,
        default=10,
        help="linear learning-rate warm-up, then constant (authors: 10)",
    )
    p.add_argument(
        "--max-grad-norm",
        type=v.float_range(0.0, None, low_open=True),
        help="clip gradients to this norm (default: no clipping, as the authors)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (slow first step; helps on GPUs)"
    )
    p.add_argument(
        "--hidden-ratio",
        type=v.float_range(0.0, 4.0, low_open=True),
        default=0.5,
        help="adapter bottleneck width / block width",
    )
    p.add_argument("--placement", choices=["parallel", "serial"], default="parallel")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--preview-every",
        type=v.NON_NEGATIVE,
        default=0,
        help="write a preview video to OUT/previews/ every N steps of each stage (default 0: none)",
    )
    p.add_argument("--preview-prompt", help="prompt of the previews (default: the training caption)")
    p.add_argument("--preview-steps", type=v.POSITIVE, default=25, help="DDIM steps of each preview")
    p.add_argument("--preview-frames", type=v.POSITIVE, default=8)


def _preview(args: argparse.Namespace):
    from dreamvideo.methods import PreviewSettings

    return PreviewSettings(
        every=args.preview_every,
        prompt=args.preview_prompt,
        num_frames=args.preview_frames,
        steps=args.preview_steps,
        seed=args.seed,
    )


def _method_argument(p: argparse.ArgumentParser, kind: str) -> None:
    from dreamvideo import methods

    extra = " (one-stage baselines train with the --identity-* settings)" if kind == "subject" else ""
    p.add_argument(
        "--method",
        default="dreamvideo",
        choices=methods.names(kind),
        help=f"learning method: DreamVideo or a baseline of the paper's comparisons{extra}",
    )


# ---------------------------------------------------------------------------------------------- learn-subject
def _base_root(args: argparse.Namespace) -> Path:
    from dreamvideo.base import resolve_base

    return resolve_base(args.base)


def _preflight_subject(args: argparse.Namespace, settings) -> None:
    """Every check of learn-subject that needs no model: output folder, the method's settings, photos and masks."""
    from transformers import AutoTokenizer

    from dreamvideo import methods
    from dreamvideo.base import native_size
    from dreamvideo.data import load_subject_images

    check_output_early(args.out, SUBJECT_FILE, args.overwrite, args.resume)
    root = _base_root(args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError) as err:
        raise DreamVideoError(f"{root / 'tokenizer'}: cannot load the tokenizer ({err})") from err
    data = load_subject_images(args.images, settings.resolution or native_size(root), args.masks)
    methods.get(args.method, "subject").check_settings(tokenizer, settings, data)


def subject_settings(
    token: str,
    init_word: str,
    textual_inversion,
    identity,
    caption: str = "a {token}",
    resolution: int | None = None,
    use_masks: bool = True,
    identity_sites: tuple[str, ...] = ("attn2",),
    hidden_ratio: float = 0.5,
    placement: str = "parallel",
    train_token: bool = True,
    identity_adapter: bool = True,
):
    """The :class:`~dreamvideo.methods.SubjectSettings` of ``learn-subject`` (shared by the CLI and the web app).

    Args:
        token, init_word, caption, resolution, use_masks, train_token: as in ``SubjectSettings``.
        textual_inversion, identity: the two stages' :class:`~dreamvideo.training.StageConfig`.
        identity_sites, hidden_ratio, placement: the identity adapter's placement and width.
        identity_adapter: ``False`` learns no identity adapter (``SubjectSettings.identity_adapter=None``).
    """
    from dreamvideo import adapters as ad
    from dreamvideo.methods import SubjectSettings

    config = ad.identity_adapter_config(sites=identity_sites, hidden_ratio=hidden_ratio, placement=placement)
    return SubjectSettings(
        token=token,
        init_word=init_word,
        caption=caption,
        resolution=resolution,
        textual_inversion=textual_inversion,
        identity=identity,
        use_masks=use_masks,
        identity_adapter=config if identity_adapter else None,
        train_token=train_token,
    )


def cmd_learn_subject(args: argparse.Namespace) -> int:
    from dreamvideo import methods

    settings = subject_settings(
        args.token,
        args.init_word,
        _stage("textual_inversion_", args),
        _stage("identity_", args),
        caption=args.caption,
        resolution=args.resolution,
        use_masks=args.use_masks,
        identity_sites=tuple(args.identity_sites),
        hidden_ratio=args.hidden_ratio,
        placement=args.placement,
        train_token=args.train_token,
        identity_adapter=args.identity_adapter,
    )
    preview = _preview(args)
    _preflight_subject(args, settings)
    pipe = load_pipe(args)
    out = methods.learn_subject(
        pipe,
        args.images,
        args.out,
        settings,
        method=args.method,
        stage=_stage("identity_", args),
        masks=args.masks,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
        preview=preview,
    )
    words = read_json(out / SUBJECT_FILE).get("token") or args.init_word
    print(f"subject ({args.method}) written to {out} (use '{words}' in prompts)")
    return 0


# ---------------------------------------------------------------------------------------------- learn-motion
def _preflight_motion(args: argparse.Namespace) -> None:
    """Every check of learn-motion that needs no model: output folder and videos."""
    from dreamvideo.base import native_size
    from dreamvideo.methods.motion import MotionSettings, load_motion_data

    check_output_early(args.out, MOTION_FILE, args.overwrite, args.resume)
    root = _base_root(args)
    size = min(args.resolution or native_size(root), 64)  # a small decode is enough to validate every frame
    lengths = MotionSettings(
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        target_fps=args.target_fps,
        short_videos=args.short_videos,
    )
    load_motion_data(args.videos, size, lengths, args.caption)


def motion_settings(
    pipe,
    stage,
    num_frames: int = 32,
    frame_stride: int | None = None,
    target_fps: float = 8.0,
    resolution: int | None = None,
    caption_dropout: float = 0.5,
    appearance_dropout: float = 0.5,
    appearance_guidance: bool = True,
    motion_sites: tuple[str, ...] = ("attn1", "attn2", "ff"),
    hidden_ratio: float = 0.5,
    placement: str = "parallel",
    short_videos: str = "loop",
):
    """The :class:`~dreamvideo.methods.MotionSettings` of ``learn-motion`` (shared by the CLI and the web app).

    Args:
        pipe: the base model (its image encoder sets the adapter's condition width under appearance guidance).
        stage: the :class:`~dreamvideo.training.StageConfig`.
        num_frames, frame_stride, target_fps, resolution, caption_dropout, appearance_dropout, appearance_guidance,
            short_videos: as in ``MotionSettings``.
        motion_sites, hidden_ratio, placement: the motion adapter's placement and width.
    """
    from dreamvideo import adapters as ad
    from dreamvideo.methods import MotionSettings

    return MotionSettings(
        num_frames=num_frames,
        frame_stride=frame_stride,
        target_fps=target_fps,
        resolution=resolution,
        stage=stage,
        caption_dropout=caption_dropout,
        appearance_dropout=appearance_dropout,
        appearance_guidance=appearance_guidance,
        motion_adapter=ad.motion_adapter_config(
            pipe.condition_dim if appearance_guidance else None,
            sites=motion_sites,
            hidden_ratio=hidden_ratio,
            placement=placement,
        ),
        short_videos=short_videos,
    )


def cmd_learn_motion(args: argparse.Namespace) -> int:
    from dreamvideo import methods

    preview = _preview(args)
    _preflight_motion(args)
    pipe = load_pipe(args)
    settings = motion_settings(
        pipe,
        _stage("", args),
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        target_fps=args.target_fps,
        resolution=args.resolution,
        caption_dropout=args.caption_dropout,
        appearance_dropout=args.appearance_dropout,
        appearance_guidance=args.appearance_guidance,
        motion_sites=tuple(args.motion_sites),
        hidden_ratio=args.hidden_ratio,
        placement=args.placement,
        short_videos=args.short_videos,
    )
    out = methods.learn_motion(
        pipe,
        args.videos,
        args.out,
        settings,
        method=args.method,
        captions=args.caption,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
        preview=preview,
    )
    print(f"motion ({args.method}) written to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- generate
def _video_targets(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    """(prompt, target, sibling) for every prompt: ``out`` or ``out_NN`` and the other format beside it."""
    out = Path(args.out)
    rows = []
    for i, prompt in enumerate(args.prompt):
        target = out if len(args.prompt) == 1 else out.with_name(f"{out.stem}_{i:02d}{out.suffix}")
        rows.append(
            (prompt, target, target.with_suffix(".gif" if target.suffix.lower() == ".mp4" else ".mp4"))
        )
    return rows


def _preflight_generate(args: argparse.Namespace):
    """Every check of generate that needs no model: destination, learned folders, appearance image."""
    from dreamvideo.artifacts import check_checkpoint_run

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise DreamVideoError(f"{out}: --out must end in .mp4 or .gif")
    v.check_writable_folder(out.parent, "--out's folder")
    v.check_new_files(
        [f for _, target, other in _video_targets(args) for f in (target, other)], args.overwrite
    )
    from dreamvideo.artifacts import resolve_step

    if args.subject:
        args.subject_step = resolve_step(args.subject, "identity_adapter", args.subject_step)
    if args.motion:
        args.motion_step = resolve_step(args.motion, "motion_adapter", args.motion_step)
    for folder, marker, step in (
        (args.subject, "subject.json", args.subject_step),
        (args.motion, "motion.json", args.motion_step),
    ):
        if folder is None:
            continue
        v.check_learned_info(folder, marker)
        if step is not None:
            check_checkpoint_run(folder, marker, step)
        for file in v.learned_files(folder, step):
            v.check_tensor_file(file)
    return v.open_rgb_image(args.appearance_image) if args.appearance_image else None


def open_appearance_image(path: str | Path | None):
    """The appearance-guidance reference as an RGB ``PIL.Image`` (``None`` without a path); bombs are refused."""
    return v.open_rgb_image(Path(path)) if path else None


def load_learned(
    pipe,
    subject: str | Path | None = None,
    subject_step: int | None = None,
    subject_scale: float = 1.0,
    motion: str | Path | None = None,
    motion_step: int | None = None,
    motion_scale: float = 1.0,
) -> str | None:
    """Load a learned subject and/or motion into ``pipe``, as ``dreamvideo generate`` does.

    Args:
        pipe: a :class:`~dreamvideo.pipeline.DreamVideoPipeline`.
        subject, motion: folders written by ``learn-subject`` / ``learn-motion`` (or ``None``).
        subject_step, motion_step: a checkpoint step instead of the final weights.
        subject_scale, motion_scale: adapter output scales.

    Returns:
        The subject's placeholder token, or ``None`` without one.
    """
    token = pipe.load_subject(subject, step=subject_step, scale=subject_scale) if subject else None
    if motion:
        pipe.load_motion(motion, step=motion_step, scale=motion_scale)
    return token


def write_both_formats(frames, target: Path, fps: float = 8) -> Path:
    """Write ``target`` (.mp4 or .gif) and the same video in the other format next to it; return the other."""
    from dreamvideo.video_io import write_video

    target = Path(target)
    other = target.with_suffix(".gif" if target.suffix.lower() == ".mp4" else ".mp4")
    write_video(frames, target, fps=fps)
    write_video(frames, other, fps=fps)
    return other


def cmd_generate(args: argparse.Namespace) -> int:
    from dreamvideo.data import load_motion_videos
    from dreamvideo.memory import check_sampling_memory
    from dreamvideo.video_io import write_frames_png

    appearance = _preflight_generate(args)
    pipe = load_pipe(args)
    token = load_learned(
        pipe,
        args.subject,
        args.subject_step,
        args.subject_scale,
        args.motion,
        args.motion_step,
        args.motion_scale,
    )
    if token is not None and token not in " ".join(args.prompt):
        print(f"note: the prompt does not contain the subject token '{token}'")
    from dreamvideo.reference.cli import apply_generate_arguments  # appearance encoder (section 9)

    reference = apply_generate_arguments(pipe, args)
    size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    check_sampling_memory(
        pipe,
        args.frames,
        args.height or size,
        args.width or size,
        pipe.resolve_guidance_scale(args.guidance_scale) > 1.0,
        args.max_memory_gb,
    )
    init_video = None
    if args.init_video:
        video = load_motion_videos(args.init_video, args.height or size).videos[0]
        init_video = video[: args.frames]
    from dreamvideo.distributed import shard

    rows = list(enumerate(_video_targets(args)))
    for i, (prompt, target, other) in shard(rows):  # under accelerate launch: each process some prompts
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
        frames = result.frames[0]
        write_both_formats(frames, target, args.fps)
        if args.png_frames:
            write_frames_png(frames, target.with_suffix(""))
        print(f"{prompt!r} -> {target} (+ {other.name})")
    return 0


# ---------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from dreamvideo import adapters as ad
    from dreamvideo.base import MODELSCOPE_IMAGE_EMBED_DIM, modelscope_unet_on_meta

    if args.base is None:
        unet, cond_dim, name = (
            modelscope_unet_on_meta(),
            MODELSCOPE_IMAGE_EMBED_DIM,
            "ModelScopeT2V-1.7B (meta device)",
        )
    else:
        pipe = load_pipe(args)
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


def _step_choice(text: str) -> int | str:
    """argparse type of --subject-step / --motion-step: 'auto', 'final' or a positive step."""
    if text in ("auto", "final"):
        return text
    return v.POSITIVE(text)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``learn-subject``, ``learn-motion``, ``generate`` and ``info``."""
    _add_learn_subject(subparsers)
    _add_learn_motion(subparsers)
    _add_generate(subparsers)
    _add_info(subparsers)


def _stage_arguments(
    p: argparse.ArgumentParser, name: str, alias: str, steps: int, lr: float, help: str
) -> None:
    """``--NAME-steps``, ``--NAME-lr`` and ``--NAME-batch-size`` (also ``--ALIAS-...``): what :func:`_stage` reads.

    Args:
        p: the command's parser.
        name: the stage's flag prefix, e.g. ``identity``.
        alias: the older prefix still accepted, e.g. ``adapter``.
        steps: default steps.
        lr: default learning rate.
        help: the help of the steps flag.
    """
    p.add_argument(f"--{name}-steps", f"--{alias}-steps", type=v.NON_NEGATIVE, default=steps, help=help)
    p.add_argument(f"--{name}-lr", f"--{alias}-lr", type=v.LEARNING_RATE, default=lr)
    p.add_argument(f"--{name}-batch-size", f"--{alias}-batch-size", type=v.POSITIVE, default=4)


def _sites_argument(p: argparse.ArgumentParser, name: str, default: list[str], help: str) -> None:
    """``--NAME-sites`` (also ``--adapter-sites``): the sub-layers of each block that get the adapter."""
    p.add_argument(
        f"--{name}-sites",
        "--adapter-sites",
        nargs="+",
        default=default,
        choices=["attn1", "attn2", "ff"],
        help=help,
    )


def _learner_arguments(p: argparse.ArgumentParser, kind: str, func) -> None:
    """What ``learn-subject`` and ``learn-motion`` end with: ``--method``, the common training flags, the command."""
    _method_argument(p, kind)
    _common_training(p)
    p.set_defaults(func=func)


def _add_learn_subject(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "learn-subject", help="learn a subject (token + identity adapter) from a few photos"
    )
    p.add_argument("--images", required=True, type=Path, help="folder of photos (or with images/ and masks/)")
    p.add_argument("--masks", type=Path, help="folder of subject masks matched by file name (optional)")
    p.add_argument("--no-masks", dest="use_masks", action="store_false", help="ignore masks even if present")
    p.add_argument("--token", default="<sks>", help="placeholder word to learn (default <sks>)")
    p.add_argument("--init-word", required=True, help="one-token class word, e.g. dog")
    p.add_argument(
        "--caption",
        default="a {token}",
        help="caption template (default 'a {token}', the authors'; 'a {token} {word}' adds the class word)",
    )
    p.add_argument("--resolution", type=v.SIZE, help="training image size (default: the base's native size)")
    _stage_arguments(p, "textual-inversion", "ti", 3000, 1e-4, "textual inversion steps (authors: 1500-3000)")
    _stage_arguments(
        p,
        "identity",
        "adapter",
        1000,
        1e-5,
        "identity adapter steps (authors: 500-1000); the one stage of the other methods",
    )
    _sites_argument(
        p,
        "identity",
        ["attn2"],
        "spatial sub-layers that get the identity adapter (paper: attn2, the cross-attention)",
    )
    p.add_argument(
        "--no-train-token",
        "--no-textual-inversion",
        dest="train_token",
        action="store_false",
        help="ablation: keep the init word's embedding",
    )
    p.add_argument(
        "--no-identity-adapter",
        dest="identity_adapter",
        action="store_false",
        help="ablation: the token only",
    )
    _learner_arguments(p, "subject", cmd_learn_subject)


def _add_learn_motion(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("learn-motion", help="learn a motion adapter from a few videos")
    p.add_argument(
        "--videos", required=True, type=Path, help="folder of videos (optional captions.json) or one video"
    )
    p.add_argument("--caption", help="caption for every video (default: captions.json or the file names)")
    p.add_argument(
        "--image-encoder",
        type=Path,
        help="CLIPVisionModelWithProjection folder (default: base/image_encoder)",
    )
    p.add_argument(
        "--no-appearance-guidance",
        dest="appearance_guidance",
        action="store_false",
        help="train without appearance guidance",
    )
    p.add_argument(
        "--num-frames", type=v.int_range(2), default=32, help="frames per training clip (authors: 32)"
    )
    p.add_argument(
        "--frame-stride",
        type=v.POSITIVE,
        help="take every n-th frame (default: from each video's frame rate, for --target-fps)",
    )
    p.add_argument(
        "--target-fps",
        type=v.float_range(0.0, None, low_open=True),
        default=8.0,
        help="frame rate of the training clips when --frame-stride is not given (authors: 8)",
    )
    p.add_argument(
        "--short-videos",
        choices=["loop", "pad", "error"],
        default="loop",
        help="videos shorter than a clip: play them ping-pong (loop), pad them with black frames as the "
        "authors do (pad), or refuse them (error)",
    )
    p.add_argument("--resolution", type=v.SIZE, help="training clip size (default: the base's native size)")
    p.add_argument("--steps", type=v.POSITIVE, default=3000, help="training steps (authors: 3000)")
    p.add_argument("--lr", type=v.LEARNING_RATE, default=1e-5)
    p.add_argument("--batch-size", type=v.POSITIVE, default=1)
    p.add_argument("--caption-dropout", type=v.FRACTION, default=0.5)
    p.add_argument("--appearance-dropout", type=v.FRACTION, default=0.5)
    _sites_argument(p, "motion", ["attn1", "attn2", "ff"], "temporal sub-layers that get the motion adapter")
    _learner_arguments(p, "motion", cmd_learn_motion)


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate videos with a subject, a motion, both, or neither")
    p.add_argument("--base", default="toy")
    p.add_argument("--subject", type=Path, help="subject folder from learn-subject")
    p.add_argument(
        "--subject-step",
        type=_step_choice,
        default="auto",
        help="identity adapter checkpoint: a step, 'final', or 'auto' (the authors': step 500, else the "
        "last one before it, or the final weights when training stopped earlier)",
    )
    p.add_argument("--subject-scale", type=v.STRENGTH, default=1.0)
    p.add_argument("--motion", type=Path, help="motion folder from learn-motion")
    p.add_argument(
        "--motion-step",
        type=_step_choice,
        default="auto",
        help="motion adapter checkpoint: a step, 'final', or 'auto' (the authors': step 1500, likewise)",
    )
    p.add_argument("--motion-scale", type=v.STRENGTH, default=1.0)
    p.add_argument("--prompt", required=True, nargs="+", help="one or more prompts")
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--out", required=True, type=Path, help="video file (.mp4 or .gif; the other format is written too)"
    )
    p.add_argument("--png-frames", action="store_true", help="also write the frames as PNG files")
    p.add_argument("--overwrite", action="store_true", help="replace existing video files")
    p.add_argument(
        "--max-memory-gb",
        type=v.float_range(0.0, None, low_open=True),
        help="refuse videos whose estimated sampling memory exceeds this (default: the free memory)",
    )
    p.add_argument("--image-encoder", type=Path)
    p.add_argument("--appearance-image", type=Path, help="reference image for appearance guidance")
    p.add_argument("--appearance-strength", type=v.STRENGTH, default=1.0, help="lam_c, conditional branch")
    p.add_argument(
        "--appearance-strength-uncond", type=v.STRENGTH, default=1.0, help="lam_u, unconditional branch"
    )
    p.add_argument(
        "--guidance-scale",
        type=v.GUIDANCE,
        help="classifier-free guidance scale; default: the base's (9.0 for ModelScope, 3.0 for the toy model)",
    )
    p.add_argument(
        "--guidance-rescale",
        type=v.FRACTION,
        help="rescale of the guided prediction, 0-1 (Lin et al.); default: 0.7 on zero-terminal-SNR bases, else 0",
    )
    p.add_argument("--steps", type=v.int_range(1, 10000), default=50, help="DDIM steps")
    p.add_argument(
        "--offset-noise",
        type=v.float_range(0.0, 1.0),
        default=0.1,
        help="offset noise added to the starting noise, one draw per frame (authors: 0.1)",
    )
    p.add_argument("--frames", type=v.POSITIVE, default=32, help="frames to generate (authors: 32)")
    p.add_argument("--height", type=v.SIZE)
    p.add_argument("--width", type=v.SIZE)
    p.add_argument("--fps", type=v.int_range(1, 240), default=8)
    p.add_argument("--seed", type=v.NON_NEGATIVE, default=0)
    p.add_argument(
        "--init-video", type=Path, help="training video whose DDIM-inverted latents start sampling"
    )
    p.add_argument(
        "--init-strength", type=v.float_range(0.0, 0.5), default=0.0, help="mix of inverted latents, 0-0.5"
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (slow first step; helps on GPUs)"
    )
    p.add_argument("--quiet", action="store_true")
    from dreamvideo.reference.cli import add_generate_arguments

    add_generate_arguments(p)
    p.set_defaults(func=cmd_generate)


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="adapter sites and trainable parameter counts of a base model")
    p.add_argument(
        "--base", default=None, help="a base model; default: the full ModelScope-1.7B architecture"
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_info)
