"""Shared fixtures: tiny seeded models of every family, built once per test session."""
from __future__ import annotations

import os
import tempfile

import pytest

from helpers import FAMILIES

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# packed expert stores of the test models go to a throwaway folder, never ~/.cache
os.environ["MOEPIC_CACHE_DIR"] = tempfile.mkdtemp(prefix="moepic-test-cache-")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> folder of a tiny random model with tokenizer (float32, seed 0)."""
    from moepic_core.testing import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {f: make_tiny_model(f, root / f, seed=0) for f in FAMILIES}


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "store-cache")
