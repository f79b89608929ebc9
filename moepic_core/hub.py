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


NO_CONNECTION = "no connection: download the model on a connected machine or give a local folder"


def download_problem(repo_id: str, exc: Exception) -> str:
    """One plain line for a failed download: no connection, unknown or gated model, anything else."""
    from huggingface_hub import errors

    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)) \
            or type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException"):
        return f"{repo_id}: {NO_CONNECTION}"
    if isinstance(exc, errors.GatedRepoError):
        return f"{repo_id} is gated: accept its licence on huggingface.co, log in (`hf auth login`), then load it again"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"{repo_id} is not on huggingface.co (a typo, or a private model?)"
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return f"{repo_id}: the disk is full: free some space or set HF_HOME to a larger disk"
    return f"could not download {repo_id}: {type(exc).__name__}: {exc}"


def download(repo_id: str, *, tqdm_class=None, cache_dir: str | None = None) -> Path:
    """Download a hub model's config, tokenizer and safetensors; ModelLoadError with one plain line if not."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=WEIGHT_PATTERNS, tqdm_class=tqdm_class,
                                      cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors all end here
        raise ModelLoadError(download_problem(repo_id, e)) from e
