"""Hub downloads (huggingface_hub). Only ever called on a user's request, never at start."""
from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def cached_snapshot(repo_id: str) -> Path | None:
    """The local folder of an already-downloaded hub model, or None."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=WEIGHT_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def download(repo_id: str, *, tqdm_class=None, cache_dir: str | None = None) -> Path:
    """Download a hub model's config, tokenizer and safetensors; a clear error when offline."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=WEIGHT_PATTERNS, tqdm_class=tqdm_class,
                                      cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors all end here
        raise ModelLoadError(f"could not download {repo_id}: {type(e).__name__}: {e}. "
                             "Are you offline? Download it on a connected machine or give a local folder.") from e
