"""Packed training units (``train-generator --pack-shared``): the same loss and gradients as the examples apart."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rag_pipeline import packing
from rag_pipeline import train as T
from rag_pipeline.errors import ConfigError
from rag_pipeline.generator import batch_loss, collate
from tests.tiny_models import ANIMALS, COLOURS, build_tiny_llama, build_tiny_t5


def example(prefix: list[int], rest: list[int], n_target: int) -> dict:
    ids = prefix + rest
    return {"input_ids": ids, "labels": [-100] * (len(ids) - n_target) + ids[-n_target:], "prompt_cut": 0}


def test_pack_groups_by_key_and_ends_the_prefix_before_every_completion() -> None:
    p = list(range(100, 140))  # 40 shared tokens
    a, b, c = example(p, [1, 2, 3], 2), example(p, [1, 5, 6, 7], 3), example(p, [9, 9], 1)
    lone = example(list(range(200, 250)), [4], 1)
    units = packing.pack([a, lone, b, c], ["k", "other", "k", "k"], max_examples=2)
    assert [u["n_examples"] for u in units] == [2, 1, 1]  # "k" (seen first) split into 2 + 1, then "other"
    first = units[0]
    # a and b share 41 tokens (the prefix and token 1), but a's completion starts at 41: the prefix stops at 40
    assert first["segments"] == [40, 3, 4]
    assert first["input_ids"] == p + [1, 2, 3] + [1, 5, 6, 7]
    assert first["labels"] == [-100] * 41 + [2, 3] + [-100] * 1 + [5, 6, 7]
    assert units[1]["segments"] == [0, 42] and units[1]["input_ids"] == c["input_ids"]  # a group of one: as it was
    assert units[2]["segments"] == [0, 51] and units[2]["labels"] == lone["labels"]
    assert packing.unpacked_tokens(first) == len(a["input_ids"]) + len(b["input_ids"])
    short = packing.pack([example([1, 2], [3, 4], 1), example([1, 2], [5, 6], 1)], ["k", "k"])  # 2 shared tokens < MIN_PREFIX
    assert [u["segments"] for u in short] == [[0, 4], [0, 4]]


def test_collate_gives_each_rest_the_prefix_and_itself() -> None:
    unit = {"input_ids": [7, 7, 1, 2, 3], "labels": [-100] * 5, "segments": [2, 2, 1], "n_examples": 2}
    lone = {"input_ids": [5, 6], "labels": [-100, 6], "segments": [0, 2], "n_examples": 1}
    batch = packing.collate([unit, lone], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 0, 0, 0, 1]]
    m = batch["attention_mask"][:, 0].int().tolist()
    assert m[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert m[1] == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]  # padding: itself
    additive = packing.collate([unit, lone], pad_id=0, additive=True)["attention_mask"]
    assert additive.dtype == torch.float32 and bool(((additive == 0) == batch["attention_mask"]).all())


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("pack") / "llama")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_the_examples_apart(llama: Path, attn: str) -> None:
    from transformers import AutoModelForCausalLM

    # float64 (the loss itself is float32); the examples apart always through sdpa (eager attention in float64 gives
    # left-padded rows NaN there)
    ref = AutoModelForCausalLM.from_pretrained(str(llama), attn_implementation="sdpa").double()
    model = AutoModelForCausalLM.from_pretrained(str(llama), attn_implementation=attn).double()
    rng = random.Random(0)
    shared = [rng.randrange(10, 300) for _ in range(48)]
    examples = [example(shared, [rng.randrange(10, 300) for _ in range(n)], t) for n, t in ((9, 3), (5, 2), (12, 4))]
    examples.append(example([rng.randrange(10, 300) for _ in range(40)], [11, 12, 13], 2))  # shares nothing
    units = packing.pack(examples, ["a", "a", "a", "b"])
    assert [u["n_examples"] for u in units] == [3, 1]

    def loss_and_grads(model: object, batch: dict) -> tuple[float, int, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss, n = batch_loss(model, batch, "causal")
        loss.backward()
        return float(loss.detach()), n, [p.grad.clone() for p in model.parameters()]

    apart = loss_and_grads(ref, collate(examples, 0, "causal"))
    packed = loss_and_grads(model, packing.collate(units, 0, additive=attn == "eager"))
    assert packed[1] == apart[1] == 11
    assert packed[0] == pytest.approx(apart[0], rel=1e-6)  # float32 rounding; a rest that saw another moves it by ~1e-1
    for g_packed, g_apart in zip(packed[2], apart[2]):
        torch.testing.assert_close(g_packed, g_apart, rtol=1e-4, atol=1e-5 * float(g_apart.abs().max()))


def shared_rows(n_groups: int, seed: int) -> list[dict]:
    """Rows in groups of three that show the same three documents, one question about each."""
    from rag_pipeline.prompt import TEMPLATES, render_user

    rng, rows = random.Random(seed), []
    for g in range(n_groups):
        docs = [{"id": f"d{g}-{a}", "title": a, "text": f"The {a} near the river is {rng.choice(COLOURS)}."}
                for a in rng.sample(ANIMALS, 3)]
        for pos, d in enumerate(docs):
            question = f"What colour is the {d['title']}?"
            colour = d["text"].split()[-1].rstrip(".")
            rows.append({"id": f"q{seed}-{g}-{pos}", "question": question, "documents": docs, "oracle_position": pos,
                         "prompt": render_user(TEMPLATES["raft-v1"], question, docs), "completion": f"{colour} [{pos + 1}]",
                         "answer": [colour], "answerable": True})
    return rows


@pytest.fixture(scope="module")
def shared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datasets import Dataset, DatasetDict

    path = tmp_path_factory.mktemp("shared") / "raft"
    splits = {"train": shared_rows(8, 0), "validation": shared_rows(2, 1)}
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path / "dataset"))
    (path / "manifest.json").write_text(json.dumps({"kind": "raft-dataset", "template": "raft-v1", "fingerprint": "shared"}))
    return path


def test_train_generator_pack_shared_learns_and_counts_examples(llama: Path, shared_dataset: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import re

    torch.set_num_threads(1)
    caplog.set_level("INFO", logger="rag_pipeline.train")
    out = tmp_path / "out"
    cfg = T.TrainConfig(dataset=str(shared_dataset), output=str(out), base_model=str(llama), pack_shared=True, batch_size=1,
                        grad_accum=2, max_steps=8, eval_steps=8, learning_rate=2e-2, eval_subset=6, eval_generate=2,
                        max_new_tokens=4, progress=False, device="cpu")
    summary = T.run(cfg)
    assert summary["status"] == "finished" and summary["tuned"]["val_loss"] < summary["base"]["val_loss"] - 0.3
    state = json.loads((out / "checkpoints" / "last" / "state.json").read_text())
    assert state["train_examples"] == 8 * 2 * 3  # 8 steps of 2 sequences, each the 3 questions of one group
    said = re.search(r"24 training examples in 8 sequences, (\d+) tokens read instead of (\d+)", caplog.text)
    assert said and int(said[2]) > 1.8 * int(said[1])  # the three prompts' shared part read once
    assert state["train_tokens"] == 2 * int(said[1])  # 8 steps of 2 sequences: each sequence twice
    assert json.loads((out / "rag_pipeline.json").read_text())["config"]["pack_shared"] is True


def test_pack_shared_refuses_a_seq2seq_model(shared_dataset: Path, tmp_path: Path) -> None:
    t5 = build_tiny_t5(tmp_path / "t5")
    cfg = T.TrainConfig(dataset=str(shared_dataset), output=str(tmp_path / "out"), base_model=str(t5), pack_shared=True,
                        max_steps=1, progress=False, device="cpu")
    with pytest.raises(ConfigError, match="pack_shared needs a causal model"):
        T.run(cfg)
