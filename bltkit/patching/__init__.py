"""Patching: where patches start (blt-reference §3). ``Patcher`` is the one interface for every
scheme; ``lengths`` holds the patch-length algebra the model uses; ``boundaries`` the rules."""
from .config import PatcherConfig, load_patcher_settings, save_patcher_settings
from .patcher import PatchResult, Patcher

__all__ = ["Patcher", "PatchResult", "PatcherConfig", "load_patcher_settings", "save_patcher_settings"]
