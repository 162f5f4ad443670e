"""dreamvideo: customized text-to-video generation with decoupled subject and motion adapters."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["DreamVideoPipeline", "DreamVideoOutput", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import dreamvideo` stays cheap, the CLI starts fast
    if name in ("DreamVideoPipeline", "DreamVideoOutput"):
        from dreamvideo import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'dreamvideo' has no attribute {name!r}")
