"""The Gradio page of ``dreamvideo app``: Subjects, Motions, Generate and Compare tabs over :mod:`.tasks`."""

from __future__ import annotations

import html
import os
from typing import Any

from dreamvideo.app import tasks
from dreamvideo.app.jobs import QUEUED, RUNNING, Job
from dreamvideo.app.workspace import Workspace
from dreamvideo.fileio import DreamVideoError

NONE = "(none)"
FINAL = "final"
VIDEO_TYPES = [".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv"]
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"]
REFRESH_SECONDS = 1.0

CSS = """
.dv-stage { margin: 4px 0 10px 0; }
.dv-stage progress { width: 100%; height: 14px; }
.dv-error { color: #b00020; font-weight: 600; }
.dv-job { border-left: 3px solid #999; padding-left: 8px; margin-bottom: 8px; }
"""


# ----------------------------------------------------------------------------------------------- rendering
def error_text(err: Exception) -> str:
    """An error as the page shows it (the library's message, no traceback)."""
    return f'<div class="dv-error">Error: {html.escape(str(err))}</div>'


def job_html(job: Job) -> str:
    """One job: its state, a progress bar per training stage with the recent loss, and its message."""
    head = f"<b>{html.escape(job.kind)} '{html.escape(job.name)}'</b> &mdash; {job.state}"
    rows = []
    for s in job.stages:
        loss = "" if s.loss is None else f", loss {s.loss:.4f}"
        rows.append(
            f'<div class="dv-stage">{html.escape(s.name)}: step {s.step}/{s.total}{loss}<br>'
            f'<progress max="{max(s.total, 1)}" value="{s.step}"></progress></div>'
        )
    message = ""
    if job.message:
        css = "dv-error" if job.state in ("failed", "interrupted") else ""
        message = f'<div class="{css}">{html.escape(job.message)}</div>'
    return f'<div class="dv-job" data-state="{job.state}">{head}{"".join(rows)}{message}</div>'


def jobs_html(ctx: tasks.AppContext, kind: str, limit: int = 5) -> str:
    jobs = [j for j in ctx.jobs.jobs() if j.kind == kind][:limit]
    return "".join(job_html(j) for j in jobs) or f"<i>no {kind} jobs yet</i>"


def library_html(ctx: tasks.AppContext, kind: str) -> str:
    """The finished subjects or motions with what they are (token and class word, captions, steps)."""
    names = ctx.workspace.library(kind)
    if not names:
        return f"<i>no {kind}s yet</i>"
    items = []
    for name in names:
        try:
            info = tasks.describe(ctx, kind, name)
        except DreamVideoError:
            continue
        if kind == "subject":
            steps = (info.get("training", {}).get("identity_adapter") or {}).get("steps_done", 0)
            what = f"token <code>{html.escape(str(info.get('token')))}</code>, class '{html.escape(str(info.get('class_word')))}', {steps} adapter steps"
        else:
            steps = info.get("training", {}).get("steps_done", 0)
            what = (
                f"captions: {html.escape('; '.join(dict.fromkeys(info.get('captions', []))))}, {steps} steps"
            )
        items.append(
            f"<li><b>{html.escape(name)}</b>: {what}<br><small>{ctx.workspace.folder(kind, name)}</small></li>"
        )
    return f'<ul class="dv-library">{"".join(items)}</ul>'


def latest_preview(ctx: tasks.AppContext, kind: str) -> str | None:
    for job in ctx.jobs.jobs():
        if job.kind == kind:
            found = tasks.previews(job)
            return str(found[-1]) if found else None
    return None


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "", FINAL) else int(value)


def _name(value: Any) -> str:
    return "" if value in (None, "", NONE) else str(value)


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]


# ----------------------------------------------------------------------------------------------- the page
def build_app(ctx: tasks.AppContext):
    """The Gradio ``Blocks`` of the app (not launched).

    Args:
        ctx: the :class:`~dreamvideo.app.tasks.AppContext` (workspace, base model, job queue).
    """
    import gradio as gr

    toy = ctx.is_toy
    with gr.Blocks(title="dreamvideo") as demo:
        gr.Markdown(
            f"# dreamvideo\nBase model: **{html.escape(str(ctx.base))}** &middot; workspace "
            f"`{ctx.workspace.root}`. Training runs in the background, one job at a time; reloading the "
            "page keeps it running."
        )
        seen = gr.State({})
        with gr.Tabs():
            with gr.Tab("Subjects", id="subjects"):
                s = _subject_tab(gr, ctx, toy)
            with gr.Tab("Motions", id="motions"):
                m = _motion_tab(gr, ctx, toy)
            with gr.Tab("Generate", id="generate"):
                g = _generate_tab(gr, ctx, toy)
            with gr.Tab("Compare", id="compare"):
                c = _compare_tab(gr, ctx, toy)

        def refresh(state: dict):
            state = dict(state or {})
            subjects, motions = ctx.workspace.library("subject"), ctx.workspace.library("motion")
            out: list[Any] = [jobs_html(ctx, "subject"), jobs_html(ctx, "motion")]
            for key, value in (
                ("subject_preview", latest_preview(ctx, "subject")),
                ("motion_preview", latest_preview(ctx, "motion")),
            ):
                out.append(gr.skip() if state.get(key) == value else value)
                state[key] = value
            lib_changed = state.get("library") != [subjects, motions]
            state["library"] = [subjects, motions]
            if lib_changed:
                out += [library_html(ctx, "subject"), library_html(ctx, "motion")]
                out += [gr.update(choices=[NONE, *subjects]), gr.update(choices=[NONE, *motions])] * 2
            else:
                out += [gr.skip()] * 6
            return [*out, state]

        outputs = [
            s["jobs"],
            m["jobs"],
            s["preview"],
            m["preview"],
            s["library"],
            m["library"],
            g["subject"],
            g["motion"],
            c["subject"],
            c["motion"],
            seen,
        ]
        gr.Timer(REFRESH_SECONDS).tick(refresh, inputs=seen, outputs=outputs, show_progress="hidden")
        demo.load(refresh, inputs=seen, outputs=outputs, show_progress="hidden")
    return demo


def _training_inputs(
    gr, prefix: str, steps: list[tuple[str, int, float]], toy: bool, batch: int = 4
) -> dict[str, Any]:
    """The training settings, each component under the request field it fills (``steps`` and ``lr``,
    ``ti_steps`` and ``ti_lr``, ..., ``batch_size``, ``checkpoint_every``, ``preview_every``,
    ``preview_steps``, ``seed``)."""
    out = {}
    with gr.Accordion("Training settings", open=False, elem_id=f"{prefix}-settings"):
        with gr.Row():
            for key, value, lr in steps:
                label = key.replace("_", " ").replace("ti ", "textual inversion ")
                out[key] = gr.Number(value, label=label, precision=0, minimum=1, elem_id=f"{prefix}-{key}")
                stage = key.replace("_steps", "").replace("steps", "").replace("ti", "textual inversion")
                out[key.replace("steps", "lr")] = gr.Number(lr, label=f"{stage} learning rate".strip())
        with gr.Row():
            out["batch_size"] = gr.Number(batch, label="batch size", precision=0, minimum=1)
            for key, value, label, minimum in (
                ("checkpoint_every", 50 if toy else 100, "checkpoint every N steps", 1),
                ("preview_every", 50 if toy else 0, "preview every N steps (0: none)", 0),
            ):
                out[key] = gr.Number(
                    value,
                    label=label,
                    precision=0,
                    minimum=minimum,
                    elem_id=f"{prefix}-{key.replace('_', '-')}",
                )
            out["preview_steps"] = gr.Number(
                10 if toy else 25, label="preview DDIM steps", precision=0, minimum=1
            )
            out["seed"] = gr.Number(0, label="seed", precision=0)
    return out


def _cancel(ctx: tasks.AppContext, kind: str) -> str:
    active = [j for j in ctx.jobs.jobs() if j.kind == kind and j.state in (QUEUED, RUNNING)]
    if not active:
        return f"no {kind} job to cancel"
    job = ctx.jobs.cancel(active[-1].id)
    return f"cancel requested for {kind} '{html.escape(job.name)}'"


def _uploads(gr, label: str, types: list[str], elem_id: str):
    """A field for several files of the given endings."""
    return gr.File(label=label, file_count="multiple", file_types=types, elem_id=elem_id)


def _player(gr, label: str, elem_id: str, height: int = 384):
    """A video that plays on its own, in a loop."""
    return gr.Video(label=label, interactive=False, elem_id=elem_id, autoplay=True, loop=True, height=height)


def _learn_controls(gr, kind: str) -> tuple[Any, Any, Any]:
    """The learn and cancel buttons of a training tab and its status line."""
    with gr.Row():
        learn = gr.Button(f"Learn {kind}", variant="primary", elem_id=f"{kind}-learn")
        cancel = gr.Button("Cancel", elem_id=f"{kind}-cancel")
    status = gr.HTML(elem_id=f"{kind}-status")
    return learn, cancel, status


def _progress_column(gr, kind: str) -> dict[str, Any]:
    """The right column of a training tab: the jobs, the latest preview and the library."""
    with gr.Column():
        gr.Markdown("### Progress")
        jobs = gr.HTML(elem_id=f"{kind}-jobs")
        preview = _player(gr, "Latest preview", f"{kind}-preview", height=256)
        gr.Markdown("### Library")
        library = gr.HTML(elem_id=f"{kind}-library")
    return {"jobs": jobs, "preview": preview, "library": library}


def _queued(kind: str, submit) -> str:
    """Submit a training job and say so, or show the library's error."""
    try:
        job = submit()
    except DreamVideoError as err:
        return error_text(err)
    return f"queued {kind} '{html.escape(job.name)}' (job {job.id})"


def _training_tab(gr, ctx: tasks.AppContext, kind: str, inputs, request) -> dict[str, Any]:
    """A Subjects or Motions tab: the inputs and the buttons on the left, the progress on the right.

    Args:
        gr: the gradio module.
        ctx: the app context.
        kind: ``"subject"`` or ``"motion"``.
        inputs: builds the input components and returns them by the request field each fills.
        request: builds the request from the fields' values, by name.
    """
    with gr.Row():
        with gr.Column():
            fields = inputs()
            learn, cancel, status = _learn_controls(gr, kind)
        progress = _progress_column(gr, kind)
    names = list(fields)
    submit_job = tasks.submit_subject if kind == "subject" else tasks.submit_motion

    def submit(*values):
        return _queued(kind, lambda: submit_job(ctx, request(**dict(zip(names, values, strict=True)))))

    learn.click(submit, list(fields.values()), status)
    cancel.click(lambda: _cancel(ctx, kind), None, status)
    return progress


def _subject_tab(gr, ctx: tasks.AppContext, toy: bool) -> dict[str, Any]:
    def inputs() -> dict[str, Any]:
        photos = _uploads(gr, "Photos of the subject (3-8)", IMAGE_TYPES, "subject-photos")
        masks = _uploads(
            gr, "Masks (optional, same file names, white = subject)", IMAGE_TYPES, "subject-masks"
        )
        with gr.Row():
            name = gr.Textbox(label="Name in the library", placeholder="my-dog", elem_id="subject-name")
            token = gr.Textbox("<sks>", label="Token", elem_id="subject-token")
            word = gr.Textbox("square" if toy else "dog", label="Class word", elem_id="subject-word")
        stages = [
            ("ti_steps", 200 if toy else 3000, 5e-3 if toy else 1e-4),
            ("adapter_steps", 150 if toy else 1000, 1e-3 if toy else 1e-5),
        ]
        settings = _training_inputs(gr, "subject", stages, toy)
        return {
            "images": photos,
            "masks": masks,
            "name": name,
            "token": token,
            "class_word": word,
            **settings,
        }

    def request(images, masks, **values) -> tasks.SubjectRequest:
        return tasks.SubjectRequest(images=_paths(images), masks=_paths(masks), **values)

    return _training_tab(gr, ctx, "subject", inputs, request)


def _motion_tab(gr, ctx: tasks.AppContext, toy: bool) -> dict[str, Any]:
    def inputs() -> dict[str, Any]:
        videos = _uploads(gr, "Videos of the motion (1 or more)", VIDEO_TYPES, "motion-videos")
        with gr.Row():
            name = gr.Textbox(label="Name in the library", placeholder="pendulum", elem_id="motion-name")
            caption = gr.Textbox(label="Caption (empty: from the file names)", elem_id="motion-caption")
        with gr.Row():
            frames = gr.Number(8 if toy else 16, label="frames per clip", precision=0, minimum=1)
            short = gr.Radio(["loop", "error"], value="loop", label="videos shorter than a clip")
        stages = [("steps", 250 if toy else 2000, 1e-3 if toy else 1e-5)]
        settings = _training_inputs(gr, "motion", stages, toy, batch=2 if toy else 1)
        fields = {"videos": videos, "name": name, "caption": caption}
        return {**fields, "num_frames": frames, "short_videos": short, **settings}

    def request(videos, caption, **values) -> tasks.MotionRequest:
        return tasks.MotionRequest(videos=_paths(videos), caption=caption or "", **values)

    return _training_tab(gr, ctx, "motion", inputs, request)


# what Generate and Compare both ask for, in the order of `_request`'s arguments
SAMPLING = ("prompt", "subject", "motion", "seed", "frames", "steps", "guidance")


def _sampling_inputs(gr, prefix: str, toy: bool) -> dict[str, Any]:
    out = {}
    with gr.Row():
        out["subject"] = gr.Dropdown([NONE], value=NONE, label="Subject", elem_id=f"{prefix}-subject")
        out["motion"] = gr.Dropdown([NONE], value=NONE, label="Motion", elem_id=f"{prefix}-motion")
    out["prompt"] = gr.Textbox(
        "a <sks> square moves on blue sky" if toy else "a <sks> dog playing guitar",
        label="Prompt",
        elem_id=f"{prefix}-prompt",
    )
    with gr.Row():
        out["seed"] = gr.Number(0, label="seed", precision=0, elem_id=f"{prefix}-seed")
        out["frames"] = gr.Number(
            8 if toy else 16, label="frames", precision=0, minimum=1, elem_id=f"{prefix}-frames"
        )
        out["steps"] = gr.Number(
            25 if toy else 50, label="DDIM steps", precision=0, minimum=1, elem_id=f"{prefix}-steps"
        )
        out["guidance"] = gr.Number(
            None, label="guidance scale (blank: the base's default)", elem_id=f"{prefix}-guidance"
        )
    return out


def _request(prompt, subject, motion, seed, frames, steps, guidance, **kw) -> tasks.GenerateRequest:
    return tasks.GenerateRequest(
        prompt=prompt or "",
        subject=_name(subject),
        motion=_name(motion),
        seed=int(seed or 0),
        frames=int(frames),
        steps=int(steps),
        guidance_scale=None if guidance in (None, "") else float(guidance),
        **kw,
    )


def _generate_tab(gr, ctx: tasks.AppContext, toy: bool) -> dict[str, Any]:
    with gr.Row():
        with gr.Column():
            f = _sampling_inputs(gr, "gen", toy)
            with gr.Accordion("Appearance guidance, adapter scales and checkpoints", open=False):
                appearance = gr.Image(
                    label="Appearance image (motion adapter's reference)",
                    type="filepath",
                    elem_id="gen-appearance",
                )
                with gr.Row():
                    lam_c = gr.Slider(0, 2, 1.0, step=0.05, label="appearance strength (conditional)")
                    lam_u = gr.Slider(0, 2, 1.0, step=0.05, label="appearance strength (unconditional)")
                with gr.Row():
                    subject_scale = gr.Slider(0, 2, 1.0, step=0.05, label="subject adapter scale")
                    motion_scale = gr.Slider(0, 2, 1.0, step=0.05, label="motion adapter scale")
                with gr.Row():
                    subject_step = gr.Dropdown([FINAL], value=FINAL, label="subject checkpoint step")
                    motion_step = gr.Dropdown([FINAL], value=FINAL, label="motion checkpoint step")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
            status = gr.HTML(elem_id="gen-status")
        with gr.Column():
            video = _player(gr, "Video", "gen-video")
            files = gr.File(
                label="Download (.mp4, .gif, contact sheet)",
                file_count="multiple",
                interactive=False,
                elem_id="gen-files",
            )
            sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id="gen-sheet")

    def steps_of(kind: str, name: str):
        choices = (
            [FINAL, *map(str, ctx.workspace.checkpoint_steps(kind, _name(name)))] if _name(name) else [FINAL]
        )
        return gr.update(choices=choices, value=FINAL)

    f["subject"].change(lambda n: steps_of("subject", n), f["subject"], subject_step)
    f["motion"].change(lambda n: steps_of("motion", n), f["motion"], motion_step)

    def go(image, a_c, a_u, s_scale, m_scale, s_step, m_step, *sampling):
        try:
            result = tasks.generate(
                ctx,
                _request(
                    *sampling,
                    appearance_image=image,
                    appearance_strength=a_c,
                    appearance_strength_uncond=a_u,
                    subject_scale=s_scale,
                    motion_scale=m_scale,
                    subject_step=_int_or_none(s_step),
                    motion_step=_int_or_none(m_step),
                ),
            )
        except DreamVideoError as err:
            return error_text(err), gr.skip(), gr.skip(), gr.skip()
        note = f"{len(result.frames)} frames &middot; {html.escape(result.label)} &middot; <code>{result.video}</code>"
        return (
            note,
            str(result.video),
            [str(result.video), str(result.gif), str(result.sheet)],
            str(result.sheet),
        )

    run.click(
        go,
        [
            appearance,
            lam_c,
            lam_u,
            subject_scale,
            motion_scale,
            subject_step,
            motion_step,
            *(f[key] for key in SAMPLING),
        ],
        [status, video, files, sheet],
    )
    return f


def _compare_tab(gr, ctx: tasks.AppContext, toy: bool) -> dict[str, Any]:
    f = _sampling_inputs(gr, "cmp", toy)
    run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
    status = gr.HTML(elem_id="cmp-status")
    with gr.Row():
        plain = _player(gr, "Base model", "cmp-base")
        custom = _player(gr, "With the subject / motion", "cmp-custom")
    metrics = gr.Dataframe(
        label="Toy oracle metrics" if toy else "Metrics (toy base only)",
        interactive=False,
        elem_id="cmp-metrics",
    )
    sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id="cmp-sheet")

    def go(*sampling):
        import pandas as pd

        try:
            a, b, rows = tasks.compare(ctx, _request(*sampling))
        except DreamVideoError as err:
            return error_text(err), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        note = "same prompt and seed; " + (
            "metrics from the toy world's oracle and toy CLIP" if rows else "metrics need the toy base"
        )
        return note, str(a.video), str(b.video), pd.DataFrame(rows), str(a.sheet)

    run.click(
        go,
        [f[key] for key in SAMPLING],
        [status, plain, custom, metrics, sheet],
    )
    return f


# ----------------------------------------------------------------------------------------------- serving
def serve(
    base: str = "toy",
    host: str = "127.0.0.1",
    port: int = 7860,
    workspace: str | os.PathLike = "dreamvideo_app",
    device: str | None = None,
    block: bool = True,
):
    """Start the app's worker and serve the page on ``host:port`` (localhost unless told otherwise).

    Args:
        base: the base model (``"toy"``: the built-in toy model).
        host: interface to bind; ``0.0.0.0`` exposes the app to the network.
        port: TCP port.
        workspace: the workspace folder (library, uploads, videos, job list).
        device: torch device (default: cuda if available).
        block: serve until interrupted (``False``: return ``(demo, url)`` with the server running).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    ws = Workspace(workspace)
    ctx = tasks.AppContext(ws, base=base, device=device)
    ctx.jobs.start()
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        allowed_paths=[str(ws.root)],
        prevent_thread_lock=True,
        quiet=False,
        theme=gr.themes.Default(),
        css=CSS,
        footer_links=[],
    )
    print(f"dreamvideo app: {url} (base {base}, workspace {ws.root})", flush=True)
    if not block:
        return demo, url
    try:
        demo.block_thread()
    finally:
        ctx.jobs.stop(timeout=1.0)
    return demo, url


__all__ = ["build_app", "serve", "job_html", "library_html", "error_text"]
