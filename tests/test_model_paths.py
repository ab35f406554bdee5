"""Model resolution: local paths, the packaged registry, offline errors."""

from __future__ import annotations

import os

import pytest

from rag_pipeline.errors import ModelNotFoundError
from rag_pipeline.model_paths import MINILM_ID, resolve_model, weights_hash


def test_packaged_minilm_resolves_offline() -> None:
    p = resolve_model(MINILM_ID)
    assert (p / "model.safetensors").is_file() and (p / "modules.json").is_file()
    assert resolve_model(p) == p.resolve()


def test_unknown_id_is_a_one_line_error_with_the_fix() -> None:
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/not-a-real-model-xyz")
    msg = str(e.value)
    assert "\n" not in msg and "packaged:" in msg and "huggingface-cli download" in msg


def test_weights_hash_changes_with_weights(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    h1 = weights_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # a distinct mtime, whatever the clock's resolution
    assert weights_hash(tmp_path) != h1
    assert weights_hash(tmp_path) == weights_hash(tmp_path)  # cached by path, size and mtime
