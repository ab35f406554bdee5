"""rag_pipeline.adapter_card: the model card written beside rag_pipeline.json, from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import REPO
import logging

import pytest

from rag_pipeline.adapter_card import CARD_FILE, MARK, card, card_text
from rag_pipeline.adapter_meta import META_FILE, AdapterMeta, read_adapter_meta, write_adapter_meta
from rag_pipeline.answer.ask import REFERENCE_ADAPTER

PEFT_TEMPLATE = """---
base_model: /root/.cache/rag_pipeline/models/SmolLM2-135M-Instruct
library_name: peft
---

# Model Card for Model ID

<!-- Provide a quick summary of what the model is/does. -->

- **Developed by:** [More Information Needed]
"""


def test_the_reference_adapters_card_says_what_its_metadata_says() -> None:
    """The committed card is the one its rag_pipeline.json gives (a calibration written since would show here), and it
    names the base model by its id, the best step's validation loss and each calibrated threshold."""
    meta = read_adapter_meta(REPO / REFERENCE_ADAPTER)
    text = (REPO / REFERENCE_ADAPTER / CARD_FILE).read_text(encoding="utf-8")
    assert text == card_text(REPO / REFERENCE_ADAPTER, meta)  # rendered now from the metadata: no date, no path in it
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in text and "/root/" not in text and "More Information" not in text
    raw = json.loads((REPO / REFERENCE_ADAPTER / META_FILE).read_text())
    best = next(e for e in raw["evals"] if e["step"] == raw["metrics"]["best_step"])
    assert f"| {best['step']} | {best['val_loss']:.3f} | {100 * best['f1']:.1f} |" in text
    for mode in ("free", "grounded"):
        assert f"| {raw['abstention'][mode]['threshold']:.3f} |" in text
    assert f"accuracy {100 * raw['abstention']['yes_no']['accuracy']:.1f}%" in text


def test_each_write_renews_the_card_and_keeps_one_written_by_hand(tmp_path: Path) -> None:
    (tmp_path / CARD_FILE).write_text(PEFT_TEMPLATE, encoding="utf-8")  # what peft's save_pretrained leaves
    meta = AdapterMeta(base_model="org/base", template="raft-v1", config={"lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj"]})
    write_adapter_meta(tmp_path, meta)
    first = (tmp_path / CARD_FILE).read_text(encoding="utf-8")
    assert MARK in first and "base_model: org/base" in first and "LoRA adapter (r 8, alpha 16; q_proj)" in first
    assert "Not calibrated" in first
    calibrated = dataclasses.replace(meta, abstention={"free": {"threshold": 1.25, "qa": "dev.jsonl", "questions": 40, "has_f1": 0.5,
                                                                "noans_acc": 0.25, "false_abstain_rate": 0.1, "roc_auc": 0.6}})
    write_adapter_meta(tmp_path, calibrated)  # as calibrate writes it back
    second = (tmp_path / CARD_FILE).read_text(encoding="utf-8")
    assert "| short answers | 40 of `dev.jsonl` | 1.250 | 50.0 | 25.0% | 10.0% | 0.600 |" in second and "Not calibrated" not in second
    (tmp_path / CARD_FILE).write_text("# our adapter\n\nhow we made it\n", encoding="utf-8")
    write_adapter_meta(tmp_path, meta)
    assert (tmp_path / CARD_FILE).read_text(encoding="utf-8") == "# our adapter\n\nhow we made it\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_snapshot_and_a_full_fine_tune_say_what_they_are() -> None:
    snap = card(AdapterMeta(base_model="b", snapshot_step=120, train_examples_seen=960))
    assert "a snapshot of a training run at optimizer step 120 (960 examples seen)" in snap and "library_name: peft" in snap
    full = card(AdapterMeta(base_model="b", method="full", model_kind="seq2seq"))
    assert "library_name: transformers" in full and "pipeline_tag: text2text-generation" in full and "fully fine-tuned" in full
    assert "- lora" not in full and "`model.safetensors`: the weights" in full


def test_the_lora_settings_come_from_the_weights_and_a_continued_run_says_where_it_started(tmp_path: Path) -> None:
    """An --init-adapter run keeps the starting adapter's rank, not its config's: the card reads adapter_config.json."""
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32, "lora_alpha": 64, "target_modules": ["v_proj", "q_proj"]}))
    meta = AdapterMeta(base_model="b", config={"lora_r": 8, "init_adapter": "adapters/start", "max_steps": 240, "epochs": 3,
                                               "learning_rate": 2e-4, "eval_generate": 64},
                       metrics={"best_step": 240, "steps": 240, "total_steps": 240, "train_seconds": None},
                       evals=[{"step": 0, "val_loss": 0.5, "f1": 0.5}, {"step": 120, "val_loss": 0.45}, {"step": 240, "val_loss": 0.4, "f1": 0.6}])
    write_adapter_meta(tmp_path, meta)
    text = (tmp_path / CARD_FILE).read_text()
    assert "LoRA adapter (r 32, alpha 64; q_proj, v_proj)" in text and "| starting from | `adapters/start`" in text
    assert "learning rate 0.0002, 240 steps," in text and "epoch" not in text.split("| recipe |")[1].split("\n")[0]
    assert "| 0 (the starting adapter) | 0.500 | 50.0 |" in text and "| 240 | 0.400 | 60.0 |" in text and "| 120 |" not in text


def test_metadata_the_card_cannot_render_still_saves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A card is documentation: a value of an unexpected type edited into rag_pipeline.json is warned about, and the
    metadata is written all the same (a training run's save or calibrate never fails on it)."""
    write_adapter_meta(tmp_path, AdapterMeta(base_model="b"))
    before = (tmp_path / CARD_FILE).read_text()
    with caplog.at_level(logging.WARNING, logger="rag_pipeline.adapter_card"):
        write_adapter_meta(tmp_path, AdapterMeta(base_model="b", evals=5))  # type: ignore[arg-type]
    assert "model card" in caplog.text and "was not written" in caplog.text
    assert json.loads((tmp_path / META_FILE).read_text())["evals"] == 5 and (tmp_path / CARD_FILE).read_text() == before
    odd = card(AdapterMeta(base_model="b", tasks={"qa": "half"},  # type: ignore[dict-item]
                           config={"epochs": None}, metrics={"train_seconds": "long"}))
    assert "| tasks | qa ? |" in odd and "? epoch(s)" in odd and "| time | ? on" in odd  # unknown values shown as such
