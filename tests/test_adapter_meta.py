"""rag_pipeline.adapter_meta: the one reader and writer of an adapter directory's rag_pipeline.json."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from rag_pipeline.adapter_meta import META_FILE, AdapterMeta, read_adapter_meta, write_adapter_meta
from rag_pipeline.answer.ask import REFERENCE_ADAPTER
from rag_pipeline.errors import InputError


def _adapter(tmp_path: Path, meta: object, weights: str = "adapter_model.safetensors") -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    (folder / weights).write_bytes(b"")
    return folder


def test_the_reference_adapters_file_reads_and_writes_back_byte_identical(tmp_path: Path) -> None:
    """Written by train-generator then calibrate (sorted keys, indented): read and written back
    unchanged, calibrate's read-modify-write changes nothing but its own key."""
    folder = tmp_path / "ref"
    folder.mkdir()
    original = (REPO / REFERENCE_ADAPTER / META_FILE).read_bytes()
    (folder / META_FILE).write_bytes(original)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    meta = read_adapter_meta(folder)
    assert meta.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta.method == "lora" and meta.template == "raft-v1"
    assert set(meta.abstention) == {"free", "grounded", "yes_no"} and meta.extra == {}
    write_adapter_meta(folder, meta)
    assert (folder / META_FILE).read_bytes() == original
    write_adapter_meta(folder, dataclasses.replace(meta, abstention={**meta.abstention, "free": {"threshold": 1.0}}))
    after, before = json.loads((folder / META_FILE).read_text()), json.loads(original)
    assert after["abstention"] == {**before["abstention"], "free": {"threshold": 1.0}}
    assert {k: v for k, v in after.items() if k != "abstention"} == {k: v for k, v in before.items() if k != "abstention"}


def test_unknown_keys_survive_a_read_modify_write(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, {"kind": "rag-generator", "base_model": "b", "method": "lora", "from_the_future": [1, 2]})
    meta = read_adapter_meta(folder)
    assert meta.extra == {"from_the_future": [1, 2]}
    write_adapter_meta(folder, dataclasses.replace(meta, abstention={"free": {"threshold": 0.5}}))
    assert json.loads((folder / META_FILE).read_text()) == {"kind": "rag-generator", "base_model": "b", "method": "lora",
                                                             "from_the_future": [1, 2], "abstention": {"free": {"threshold": 0.5}}}


def test_fields_left_none_are_not_written(tmp_path: Path) -> None:
    write_adapter_meta(tmp_path, AdapterMeta(base_model="b", template="raft-v1"))
    assert json.loads((tmp_path / META_FILE).read_text()) == {"kind": "rag-generator", "method": "lora", "base_model": "b",
                                                              "template": "raft-v1"}


def test_the_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure before the new file is on disk leaves the old one whole and no temporary file."""
    import rag_pipeline.atomic as atomic

    folder = _adapter(tmp_path, {"kind": "rag-generator", "base_model": "b"})
    before = (folder / META_FILE).read_bytes()

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_adapter_meta(folder, AdapterMeta(base_model="other"))
    monkeypatch.undo()
    assert (folder / META_FILE).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_model.safetensors", META_FILE]


@pytest.mark.parametrize("meta, words", [
    ([1, 2], "not train-generator metadata"),
    ({"kind": "raft-dataset", "base_model": "b"}, "not train-generator metadata"),
    ({"kind": "rag-generator"}, "records no base_model"),
    ({"base_model": "b", "method": "dora"}, "method 'dora': expected lora, qlora or full"),
    ({"base_model": "b", "abstention": [0.5]}, "abstention is a list, not an object"),
])
def test_damaged_metadata_is_an_input_error_naming_it(tmp_path: Path, meta: object, words: str) -> None:
    with pytest.raises(InputError, match=words):
        read_adapter_meta(_adapter(tmp_path, meta))


def test_the_weights_it_needs_follow_the_method(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, {"base_model": "b", "method": "full"})
    with pytest.raises(InputError, match="no weights \\(model.safetensors or model.safetensors.index.json\\)"):
        read_adapter_meta(folder)
    (folder / "model.safetensors").write_bytes(b"")
    assert read_adapter_meta(folder).method == "full"
    shutil.rmtree(folder)
    with pytest.raises(InputError, match="has no rag_pipeline.json"):
        read_adapter_meta(folder)
