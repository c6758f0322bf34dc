"""Patching: where patches start (docs/patching.md). ``Patcher`` is the one interface for every
scheme; ``config`` holds the typed settings and ``resolve_patcher``, the one place that decides
which settings apply; ``documents`` the document patcher the data pipeline calls; ``lengths`` the
patch-length algebra the model uses; ``boundaries`` the rules."""
from .config import PatcherConfig, load_patcher_settings, resolve_patcher, save_patcher_settings
from .documents import DocumentPatcher
from .patcher import PatchResult, Patcher

__all__ = ["Patcher", "PatchResult", "PatcherConfig", "DocumentPatcher", "resolve_patcher", "load_patcher_settings",
           "save_patcher_settings"]
