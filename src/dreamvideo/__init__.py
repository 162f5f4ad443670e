"""dreamvideo: customized text-to-video generation with decoupled subject and motion adapters."""

__version__ = "0.1.0"
