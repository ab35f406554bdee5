"""Tiny models and data built in code, for tests of training, ``ask`` and evaluation.

Nothing here downloads. Each builder is seeded and writes a normal Hugging Face directory, so
code under test loads it exactly as it loads a real model:

* :func:`build_tiny_tokenizer`: a byte-level BPE trained in a fraction of a second on
  :data:`TINY_TEXTS`; ``chat=True`` gives it a ChatML chat template (like SmolLM2's).
* :func:`build_tiny_llama` / :func:`build_tiny_t5`: 2-layer models (hidden 32) with that tokenizer.
* :func:`make_adapter`: a LoRA adapter of a tiny Llama, in the directory format train-generator writes.
* :func:`write_raft_dataset`: a RAFT dataset directory (manifest + DatasetDict) with the
  documented columns, small and learnable (the answer is a word in the oracle document).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["cat", "dog", "fox", "owl", "eel", "bat", "cow", "yak"]

TINY_TEXTS = [
    f"The {a} near the river is {c}. Question: What colour is the {a}? Answer: {c} [1]"
    for a in ANIMALS for c in COLOURS
] + ["You answer questions using only the numbered documents between <documents> and </documents>."]


def build_tiny_tokenizer(chat: bool = True, vocab_size: int = 400, extra: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer (PreTrainedTokenizerFast) with pad/eos/unk/bos special tokens; ``extra`` texts are
    learnt too (words that must be whole tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rag_pipeline.prompt import TEMPLATES

    specials = ["<pad>", "</s>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = TINY_TEXTS + [t.system for t in TEMPLATES.values()] + list(extra)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>" if chat else "</s>", unk_token="<unk>",
        bos_token="<s>",
    )
    if chat:
        fast.chat_template = CHATML
    return fast


def build_tiny_llama(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0, extra: tuple[str, ...] = ()) -> Path:
    """Save a seeded 2-layer Llama with a chat tokenizer (``extra`` texts learnt too) to ``path``; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(chat=True, extra=extra)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True, initializer_range=0.3,  # logits large enough to learn from with LoRA alone
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def build_tiny_t5(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a seeded 2-layer T5 (no chat template; pad 0, eos 1 like T5) to ``path``; return the path."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = build_tiny_tokenizer(chat=False)
    config = T5Config(
        vocab_size=len(tok), d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=layers, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter directory in the format train-generator writes (weights + tokenizer + rag_pipeline.json)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_pipeline.adapter_meta import AdapterMeta, write_adapter_meta
    from rag_pipeline.model_paths import weights_hash

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    write_adapter_meta(out, AdapterMeta(model_kind="causal", method="lora", base_model=str(base),
                                        base_weights_hash=weights_hash(base), template="raft-v1"))
    return out


def raft_rows(n: int, seed: int = 0, distractors: int = 2) -> list[dict[str, Any]]:
    """``n`` RAFT rows with the documented columns; the answer is the oracle document's colour."""
    from rag_pipeline.prompt import TEMPLATES, render_user

    rng = random.Random(seed)
    template = TEMPLATES["raft-v1"]
    rows = []
    for i in range(n):
        animal, colour = rng.choice(ANIMALS), rng.choice(COLOURS)
        oracle = {"id": f"d{i}", "title": animal, "text": f"The {animal} near the river is {colour}."}
        others = [
            {"id": f"x{i}-{j}", "title": a, "text": f"The {a} near the river is {rng.choice(COLOURS)}."}
            for j, a in enumerate(rng.sample([a for a in ANIMALS if a != animal], distractors))
        ]
        docs = others + [oracle]
        rng.shuffle(docs)
        pos = docs.index(oracle)
        question = f"What colour is the {animal}?"
        rows.append({
            "id": f"q{seed}-{i}", "question": question, "documents": docs, "oracle_position": pos,
            "prompt": render_user(template, question, docs), "completion": f"{colour} [{pos + 1}]",
            "answer": [colour], "answerable": True,
        })
    return rows


def write_raft_dataset(path: str | Path, n_train: int = 32, n_val: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """Write a RAFT dataset directory (``manifest.json`` + ``dataset/`` DatasetDict) and return it."""
    from datasets import Dataset, DatasetDict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    splits = {"train": raft_rows(n_train, seed), "validation": raft_rows(n_val, seed + 1), "test": raft_rows(n_test, seed + 2)}
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path / "dataset"))
    manifest = {"kind": "raft-dataset", "template": "raft-v1", "fingerprint": f"tiny-{seed}-{n_train}-{n_val}-{n_test}"}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path
