"""``train-generator``: LoRA (or QLoRA, or full) fine-tuning of the generator on a RAFT dataset.

Reads a RAFT dataset directory (``manifest.json`` + ``dataset/``) and writes an output directory
that plain peft loads (``PeftModel.from_pretrained(base, output)``), with the tokenizer,
``rag_pipeline.json`` (base model id and weights hash, prompt template, config, dataset
fingerprint, metrics of the base and the tuned model), ``loss_curve.png`` and, with ``--merge``,
a merged full model in ``merged/``.

The loop is a plain accelerate loop (:func:`run`: :func:`setup` -> :func:`fit`, which calls
:func:`validate` every ``eval_steps`` -> :func:`finish`), so
``accelerate launch --multi_gpu --num_processes 2 -m rag_pipeline.train ...`` (or ``torchrun
--nproc_per_node 2 -m rag_pipeline.train ...``) runs DDP unchanged, on GPUs or, without CUDA, on
CPU over gloo. (``accelerate launch --cpu --num_processes 2`` starts one process unless mpirun is set up.)
Batches are length-grouped and padded to their longest member; the causal loss takes logits
only where a completion token is predicted; bf16 autocast is on where the hardware has fast
bf16 (on our AVX512-BF16 CPU it is 1.4x faster than fp32). Checkpoints (``checkpoints/last``,
``checkpoints/best``) are written atomically at every evaluation and on Ctrl-C; ``--resume``
continues from ``last`` and ends where the uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_pipeline import packing
from rag_pipeline.adapter_meta import KIND as ADAPTER_KIND
from rag_pipeline.adapter_meta import META_FILE, AdapterMeta, read_adapter_meta, write_adapter_meta
from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, prepare_target, write_json
from rag_pipeline.cli import main as cli_main
from rag_pipeline.config import opt, to_dict
from rag_pipeline.device import bf16_supported, check_device, resolve_device
from rag_pipeline.errors import ConfigError, DeviceError, InputError
from rag_pipeline.generator import (batch_loss, check_adapter_files, collate, default_target_modules, encode_example, generate_answers,
                                    load_model, load_tokenizer)
from rag_pipeline.metrics import squad2_scores
from rag_pipeline.model_paths import SMOLLM2_ID, resolve_model, weights_hash
from rag_pipeline.prompt import recorded_template, template_text, to_model_text

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "prompt", "completion", "answer")
# Fields that may change between an interrupted run and its --resume without changing the result.
RESUME_MAY_CHANGE = ("resume", "max_minutes", "tensorboard", "merge", "device", "progress", "snapshots")
# What train-generator may replace: a finished output, or the checkpoints of an unfinished run.
ARTIFACT = Artifact("a train-generator output", META_FILE, ADAPTER_KIND,
                    scratch=frozenset({"checkpoints", "tensorboard", "snapshots"}))
CHECKPOINT_FILES = ("trainable.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
CHECKPOINT = Artifact("a training checkpoint", "trainable.pt", allowed=frozenset(CHECKPOINT_FILES))


@dataclass
class TrainConfig:
    """Configuration of ``train-generator`` (defaults < ``--config`` YAML < flags)."""

    dataset: str = opt("", "RAFT dataset directory written by build-raft-dataset (holds manifest.json and dataset/)")
    output: str = opt("", "output directory for the adapter, tokenizer, rag_pipeline.json and checkpoints")
    base_model: str = opt(SMOLLM2_ID, "base generator: a Hub id with a local copy, or a model directory")
    seed: int = opt(0, "seed for LoRA init, dropout and batch order; same seed and data give the same adapter")
    method: Literal["lora", "qlora", "full"] = opt("lora", "lora; qlora (4-bit base, CUDA + bitsandbytes only); full fine-tuning")
    full_layers: int = opt(0, "with method full: train only the last N transformer layers (and the final norm), freezing "
                              "the rest; 0 = every weight")
    base_dtype: Literal["float32", "bfloat16"] = opt("float32", "with method lora: dtype of the frozen base weights; bfloat16 "
                                                                "holds them in bf16 throughout (half the memory, no per-step casts "
                                                                "under autocast; the base computes in bf16 even with --bf16 false, "
                                                                "and --merge writes bf16 weights), the LoRA weights and optimizer "
                                                                "stay float32")
    lora_r: int = opt(16, "LoRA rank; 16 is enough to learn the answer style, 64 adds little")
    lora_alpha: int = opt(32, "LoRA scaling alpha (update scale alpha/r); 2*r is the usual choice")
    lora_dropout: float = opt(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] = opt(help="modules to adapt; empty = the attention projections of the architecture", factory=list)
    init_adapter: str = opt("", "start from this LoRA adapter directory's weights, rank and target modules instead of a fresh "
                                "LoRA (e.g. adapters/smollm2-disfl-qa, to train it further on new data); its base must be base_model")
    learning_rate: float = opt(2e-4, "peak AdamW learning rate (LoRA tolerates ~10x a full fine-tune's)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    epochs: float = opt(3.0, "passes over the train split (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run; 0 = from epochs")
    max_minutes: float = opt(0.0, "stop (evaluate and save) after this many minutes of this invocation; 0 = no limit")
    batch_size: int = opt(4, "examples per micro-batch (per process); with pack_shared, packed sequences")
    grad_accum: int = opt(4, "micro-batches per optimizer step (effective batch = batch_size * grad_accum * processes)")
    warmup_ratio: float = opt(0.05, "fraction of the steps with linear warm-up before the cosine decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 = no clipping")
    eval_steps: int = opt(0, "evaluate (and checkpoint) every N optimizer steps; 0 = every epoch")
    eval_subset: int = opt(256, "validation examples (first N by id) for the validation loss; 200+ so that choosing the best "
                                "checkpoint by it does not pick noise (64 picked the wrong step before)")
    eval_generate: int = opt(64, "of those, examples answered by greedy generation for SQuAD 2.0's EM/F1 (overall, HasAns, "
                                 "NoAns); generation is the slow part of an evaluation on CPU")
    snapshots: bool = opt(False, "keep the adapter of every evaluation as a loadable directory OUTPUT/snapshots/step-N "
                                 "(for learning curves: evaluate --adapter OUTPUT/snapshots/step-N)")
    eval_batch_size: int = opt(8, "batch size for evaluation and generation")
    max_new_tokens: int = opt(48, "generation length for EM/F1 (completions are short answers with citations)")
    metric_for_best: Literal["val_loss", "em", "f1"] = opt("f1", "metric choosing the best checkpoint (the one saved): val_loss on "
                                                                 "eval_subset, or SQuAD 2.0 overall em/f1 on eval_generate")
    early_stopping_patience: int = opt(0, "stop after N evaluations without improvement; 0 = off")
    pack_shared: bool = opt(False, "read the passages several training examples share once: examples showing the same passages "
                                   "(build-raft-dataset --share-context N) go into one sequence, each question and answer "
                                   "seeing the passages and itself only (the same loss as apart, a fraction of the tokens); "
                                   "causal models only; batch_size then counts such sequences")
    max_length: int = opt(1024, "max tokens of prompt + completion; longer prompts are cut in the middle (counted)")
    bf16: str = opt("auto", "bf16 autocast: auto (on where fast: AVX512-BF16/AMX CPUs, bf16 GPUs), true or false")
    device: str = opt("auto", "auto (CUDA if present), cpu or cuda")
    resume: bool = opt(False, "continue from OUTPUT/checkpoints/last (same config) instead of starting fresh")
    merge: bool = opt(False, "also write the base with the adapter merged in, as a full model in OUTPUT/merged")
    tensorboard: bool = opt(False, "write TensorBoard logs to OUTPUT/tensorboard")
    trust_remote_code: bool = opt(False, "allow model code shipped with the model directory")
    progress: bool = opt(True, "show a progress bar with loss and speed")

    def __post_init__(self) -> None:
        self.bf16 = str(self.bf16).lower()
        positive = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "eval_batch_size", "max_new_tokens", "eval_subset", "eval_generate")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}: it must be at least 1")
        for name in ("max_steps", "eval_steps", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is {getattr(self, name)}: use 0 (off) or a positive number")
        if not (math.isfinite(self.learning_rate) and math.isfinite(self.epochs)):
            raise ConfigError(f"learning_rate is {self.learning_rate} and epochs {self.epochs}: both must be finite numbers")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate is {self.learning_rate}: it must be positive, e.g. 2e-4 for LoRA")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout is {self.lora_dropout}: it must be in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio is {self.warmup_ratio}: it must be in [0, 1)")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError(f"epochs is {self.epochs} and max_steps is 0: set epochs > 0 or max_steps > 0")
        if self.max_minutes < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("max_minutes, max_grad_norm and weight_decay must be >= 0 (0 turns the first two off)")
        if self.max_length < 32:
            raise ConfigError(f"max_length is {self.max_length}: it must be at least 32 tokens")
        if self.bf16 not in ("auto", "true", "false"):
            raise ConfigError(f"bf16 is {self.bf16!r}: choose auto, true or false")
        if self.full_layers < 0 or (self.full_layers and self.method != "full"):
            raise ConfigError(f"full_layers is {self.full_layers} with method {self.method}: it counts the layers a full "
                              "fine-tune trains; pass --method full, or leave full_layers at 0")
        if self.base_dtype != "float32" and self.method != "lora":
            raise ConfigError(f"base_dtype is {self.base_dtype} with method {self.method}: only LoRA keeps the frozen base "
                              "apart from the trained weights; leave base_dtype at float32")
        check_device(self.device)


# ---------------------------------------------------------------------------------------- data


def load_raft(dataset_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """Read and check a RAFT dataset directory; return (manifest, DatasetDict).

    The validation split may be missing or empty (training then runs without evaluation); the
    test split is never used.

    Raises:
        InputError: missing directory/manifest/columns, or a missing or empty train split.
    """
    from datasets import load_from_disk

    d = Path(dataset_dir)
    if not str(dataset_dir) or not (d / "manifest.json").is_file():
        raise InputError(f"dataset '{dataset_dir}' has no manifest.json: pass --dataset DIR written by build-raft-dataset")
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("kind") != "raft-dataset":
        raise InputError(f"{d}/manifest.json has kind {manifest.get('kind')!r}, not 'raft-dataset': pass a build-raft-dataset output")
    if not (d / "dataset").is_dir():
        raise InputError(f"{d}/dataset is missing: rebuild the dataset with build-raft-dataset")
    try:
        ds = load_from_disk(str(d / "dataset"))
    except (OSError, ValueError, IndexError) as e:  # datasets fails this way on empty or damaged splits
        raise InputError(
            f"{d}/dataset could not be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}): "
            "it is empty or damaged (older versions wrote empty splits that cannot be read); rebuild it with build-raft-dataset"
        ) from None
    for split in ("train", "validation"):
        if split not in ds:
            if split == "validation":
                continue
            raise InputError(f"{d}/dataset has splits {sorted(ds)}, missing '{split}': rebuild it with build-raft-dataset")
        missing = [c for c in REQUIRED_COLUMNS if c not in ds[split].column_names]
        if missing:
            raise InputError(
                f"{d}/dataset split '{split}' lacks column(s) {', '.join(missing)} (has {', '.join(ds[split].column_names)}): "
                "rebuild it with build-raft-dataset"
            )
        if len(ds[split]) == 0 and split == "train":
            raise InputError(f"{d}/dataset split '{split}' is empty: build the dataset from more questions")
    return manifest, ds


def validation_rows(ds: Any, dataset: str, cfg: TrainConfig) -> Any | None:
    """The evaluation subset (first ``eval_subset`` by id), or None when the dataset has no validation examples.

    Raises:
        ConfigError: early stopping was asked for, which needs evaluations.
    """
    if "validation" in ds and len(ds["validation"]):
        return ds["validation"].sort("id").select(range(min(cfg.eval_subset, len(ds["validation"]))))
    if cfg.early_stopping_patience:
        raise ConfigError(f"early_stopping_patience is {cfg.early_stopping_patience} but dataset {dataset} has no validation examples: "
                          "set it to 0, or rebuild the dataset with a validation split (dev.jsonl in --qa-dir, or --split-ratio)")
    log.warning("dataset %s has no validation examples: training runs without evaluation (no validation loss, EM/F1 or "
                "best-checkpoint selection; the last weights are saved); rebuild it with a validation split to evaluate", dataset)
    return None


def model_texts(rows: Any, tokenizer: Any, template: Any) -> list[str]:
    """The text the generator sees for each row's prompt (rendered once per row and run)."""
    return [to_model_text(tokenizer, template, prompt) for prompt in rows["prompt"]]


def encode_split(texts: list[str], completions: list[str], tokenizer: Any, kind: str, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Encode (model text, completion) pairs; return (examples, number of examples whose prompt was cut)."""
    examples, cut = [], 0
    for text, completion in zip(texts, completions):
        ex = encode_example(tokenizer, kind, text, completion, max_length)
        cut += ex["prompt_cut"] > 0
        examples.append(ex)
    return examples, cut


def sequence_tokens(example: dict[str, Any], kind: str) -> int:
    """Tokens the model processes for an encoded example: its input, plus the decoder's labels for seq2seq."""
    return len(example["input_ids"]) + (len(example["labels"]) if kind == "seq2seq" else 0)


def eval_set(val: Any | None, tokenizer: Any, kind: str, template: Any, cfg: TrainConfig) -> EvalSet | None:
    """The validation rows encoded for the loss, and the first ``eval_generate`` short-answer rows for EM/F1 (a task
    mixture's summaries and JSON answers count in the loss only); None without rows."""
    if val is None:
        return None
    texts = model_texts(val, tokenizer, template)
    examples, _ = encode_split(texts, val["completion"], tokenizer, kind, cfg.max_length)
    tasks = val["task"] if "task" in val.column_names else ["qa"] * len(val)
    chosen = [i for i, t in enumerate(tasks) if t == "qa"][: cfg.eval_generate]
    answers = [val["answer"][i] for i in chosen]
    answerable = [val["answerable"][i] for i in chosen] if "answerable" in val.column_names else [bool(a) for a in answers]
    return EvalSet(examples, [texts[i] for i in chosen], answers, answerable)


def packed_units(examples: list[dict[str, Any]], rows: Any, kind: str, model: Any) -> list[dict[str, Any]]:
    """``--pack-shared``: the encoded training examples as units of those showing the same passages (:mod:`rag_pipeline.packing`).

    Raises:
        ConfigError: a seq2seq model, or an attention implementation that ignores a custom mask.
    """
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "sdpa"))
    if kind != "causal" or impl not in ("sdpa", "eager"):
        raise ConfigError(f"pack_shared needs a causal model with sdpa or eager attention (this one is {kind}, {impl}): "
                          "drop --pack-shared (flash and flex attention, among others, read a custom mask otherwise)")
    keys = [json.dumps(docs, sort_keys=True) for docs in rows["documents"]] if "documents" in rows.column_names else list(rows["id"])
    units = packing.pack(examples, keys)
    read, apart = sum(len(u["input_ids"]) for u in units), sum(packing.unpacked_tokens(u) for u in units)
    log.info("--pack-shared: %d training examples in %d sequences, %d tokens read instead of %d (%.2fx fewer)",
             len(examples), len(units), read, apart, apart / max(read, 1))
    return units


def train_collate(t: Trainer, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """A training micro-batch as tensors: packed units with their block mask, or examples as evaluation pads them."""
    if t.cfg.pack_shared:  # packed_units allowed sdpa (a boolean mask) and eager (an additive one) only
        eager = getattr(getattr(t.raw, "config", None), "_attn_implementation", "sdpa") == "eager"
        return packing.collate(examples, t.tokenizer.pad_token_id, additive=eager)
    return collate(examples, t.tokenizer.pad_token_id, t.kind)


def micro_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """One epoch of length-grouped micro-batches for process ``rank`` of ``world``.

    Shuffle (seeded by seed and epoch), sort within mega-batches of 32 batches by length so a
    batch holds similar lengths (little padding), then shuffle the batch order. Every process
    gets the same number of batches.
    """
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths)).tolist()
    mega = batch_size * 32
    batches: list[list[int]] = []
    for s in range(0, len(perm), mega):
        chunk = sorted(perm[s:s + mega], key=lambda i: (-lengths[i], i))
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    per_rank = len(batches) // world
    if per_rank == 0:
        raise InputError(f"{len(lengths)} training examples make fewer than one batch per process: lower --batch-size or add data")
    return batches[rank::world][:per_rank]


# --------------------------------------------------------------------------------------- model


def setup_model(cfg: TrainConfig, device: Any) -> tuple[Any, Any, str, Path]:
    """Load the base (fp32 weights; 4-bit for QLoRA) and wrap it for ``cfg.method``; return (model, tokenizer, kind, base_dir)."""
    base_dir = resolve_model(cfg.base_model)
    extra = qlora_kwargs(device) if cfg.method == "qlora" else {}
    model, kind = load_model(base_dir, cfg.base_dtype, cfg.trust_remote_code, **extra)
    model_type = model.config.model_type
    tokenizer = load_tokenizer(base_dir, kind, cfg.trust_remote_code)
    if cfg.method == "full":
        if cfg.full_layers:
            freeze_all_but_last_layers(model, cfg.full_layers)
        return model.to(device), tokenizer, kind, base_dir
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.init_adapter:
        model = init_from_adapter(model, cfg)
        return model.to(device) if cfg.method == "lora" else model, tokenizer, kind, base_dir
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or default_target_modules(model_type),
        task_type="SEQ_2_SEQ_LM" if kind == "seq2seq" else "CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"LoRA target modules {lora.target_modules} do not fit {model_type}: {str(e).splitlines()[0]}; fix --lora-target-modules") from None
    model.peft_config["default"].base_model_name_or_path = cfg.base_model
    return model.to(device) if cfg.method == "lora" else model, tokenizer, kind, base_dir


LAYER_INDEX = re.compile(r"\.(?:layers|block|h)\.(\d+)\.")
FINAL_NORMS = frozenset({"norm", "final_layer_norm", "final_layernorm", "layer_norm", "ln_f", "norm_f"})  # after the last layer


def freeze_all_but_last_layers(model: Any, n: int) -> None:
    """Leave trainable only the last ``n`` transformer layers of the (decoder) stack and the norm
    after it; embeddings, the output head and earlier layers (and a seq2seq model's encoder) are frozen.

    Raises:
        ConfigError: the model has no numbered layers, or fewer than ``n``.
    """
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))

    def in_stack(name: str) -> bool:  # the decoder of an encoder-decoder model (T5's decoder.*, BART's model.decoder.*)
        return not seq2seq or name.startswith("decoder.") or ".decoder." in name

    names = [name for name, _ in model.named_parameters()]
    indices = [int(m.group(1)) for name in names if in_stack(name) and (m := LAYER_INDEX.search(name))]
    if not indices or n > max(indices) + 1:
        raise ConfigError(f"full_layers is {n} but the model has {max(indices) + 1 if indices else 0} numbered layers: pass a smaller --full-layers")
    first = max(indices) + 1 - n
    for name, p in model.named_parameters():
        m = LAYER_INDEX.search(name) if in_stack(name) else None
        final_norm = in_stack(name) and m is None and "." in name and name.rsplit(".", 2)[-2] in FINAL_NORMS
        p.requires_grad_((m is not None and int(m.group(1)) >= first) or final_norm)


def init_from_adapter(model: Any, cfg: TrainConfig) -> Any:
    """The base wrapped in the trained LoRA adapter at ``cfg.init_adapter``, trainable (rank and
    targets are the adapter's; ``lora_r`` and ``lora_alpha`` are ignored, ``lora_dropout`` is this run's).

    Raises:
        InputError: the folder is not an adapter of ``cfg.base_model``.
    """
    from peft import PeftModel

    folder = Path(cfg.init_adapter)
    meta = read_adapter_meta(folder)
    if meta.method != "lora":
        raise InputError(f"--init-adapter {folder} is a {meta.method} fine-tune, not a LoRA adapter: give a LoRA adapter directory")
    check_adapter_files(folder, meta)
    base = meta.base_model
    if base != cfg.base_model:
        raise InputError(f"--init-adapter {folder} was trained on {base}, not {cfg.base_model}: pass --base-model {base}")
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    model.peft_config["default"].base_model_name_or_path = cfg.base_model
    set_lora_dropout(model, cfg.lora_dropout)
    return model


def set_lora_dropout(model: Any, p: float) -> None:
    """Give every LoRA module of ``model`` input dropout ``p`` (none at 0), and record it in the adapter's config.

    Dropout is a training setting, not part of what an adapter computes, so a run that continues
    from an adapter takes its own. On a 2-core CPU the dropout masks' random numbers (one mask per
    LoRA module and micro-batch) were about a quarter of a LoRA step of SmolLM2-135M in the profiler, and
    the same micro-batches took 1.45-1.55x less time without them (docs/training.md).
    """
    import torch

    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in dropouts:
                dropouts[name] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()
    model.peft_config["default"].lora_dropout = p


def qlora_kwargs(device: Any) -> dict[str, Any]:
    """from_pretrained arguments for a 4-bit NF4 base; QLoRA needs CUDA and bitsandbytes."""
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if device.type != "cuda":
        raise DeviceError("method qlora needs CUDA (bitsandbytes 4-bit) but the device is cpu: use --method lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method qlora needs bitsandbytes: pip install 'rag-pipeline[gpu]' or use --method lora")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": quant, "device_map": {"": device.index or 0}}


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters by name (LoRA weights, or all weights for a full fine-tune), on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise InputError(f"checkpoint holds weights the model lacks ({missing[0]}, ...): it is from another config; delete it or fix --output")
    import torch

    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


# ------------------------------------------------------------------------------------ evaluate


def evaluate(model: Any, tokenizer: Any, kind: str, examples: list[dict[str, Any]], texts: list[str],
             answers: list[list[str]], answerable: list[bool], cfg: TrainConfig, bf16: bool) -> dict[str, float]:
    """Validation loss (per target token) on ``examples`` and SQuAD 2.0 figures of greedy answers to ``texts``.

    Returns:
        ``val_loss``; ``em``/``f1`` (SQuAD 2.0 overall: a correct abstention scores 1), ``has_f1``,
        ``noans_acc`` and ``false_abstain_rate`` (see :func:`rag_pipeline.metrics.squad2_scores`).
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(examples), cfg.eval_batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[s:s + cfg.eval_batch_size], tokenizer.pad_token_id, kind).items()}
            loss, n = batch_loss(model, batch, kind)
            total, tokens = total + float(loss), tokens + n
    preds = generate_answers(model, tokenizer, kind, texts, max_new_tokens=cfg.max_new_tokens,
                             batch_size=cfg.eval_batch_size, max_input_length=cfg.max_length,
                             # on CPU, autocast re-casts frozen weights at every decoded token: ~4x slower
                             autocast_bf16=bf16 and device.type == "cuda") if texts else []
    model.train(was_training)
    sq = squad2_scores(preds, answers, answerable)
    out = {"val_loss": total / max(tokens, 1), "em": sq["overall_em"], "f1": sq["overall_f1"]}
    out.update({k: sq[k] for k in ("has_f1", "noans_acc", "false_abstain_rate") if sq[k] is not None})
    return out


def improved(metric: str, evaluation: dict[str, float], best: dict[str, Any] | None) -> bool:
    """Whether ``evaluation`` beats ``best``; EM/F1 ties go to the lower validation loss."""
    if best is None:
        return True
    if metric == "val_loss":
        return evaluation["val_loss"] < best["value"]
    return (evaluation[metric], -evaluation["val_loss"]) > (best["value"], -best["val_loss"])


# --------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, rng: Any) -> None:
    """Write a resumable checkpoint directory atomically."""
    import torch

    with atomic_dir(path, CHECKPOINT) as tmp:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", state.to_dict())


def rng_state() -> dict[str, Any]:
    """torch's CPU generator and, once CUDA is in use, every CUDA device's: LoRA dropout on a GPU
    draws from the device's generator, so a resumed run must get it back too."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the main process's devices (several GPUs: not exact per rank)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: Any) -> None:
    """Restore what :func:`rng_state` returned (or a bare CPU state, as older checkpoints hold)."""
    import torch

    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng)
        return
    torch.set_rng_state(rng["cpu"])
    cuda = rng.get("cuda") or []
    if cuda and not torch.cuda.is_available():
        log.warning("this checkpoint was written on CUDA and resumes on the CPU: dropout draws differ from an uninterrupted run")
    for i, state in enumerate(cuda[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, i)


def checkpoint_differs(path: Path, cfg: TrainConfig, saved: dict[str, Any] | None = None) -> list[str]:
    """The settings in which the checkpoint in ``path`` (its ``state.json``, or ``saved`` when already read) differs from
    ``cfg``, but for those a resumed run may change."""
    saved = saved or json.loads((path / "state.json").read_text(encoding="utf-8"))
    now = to_dict(cfg)
    return [k for k, v in saved["config"].items() if k not in RESUME_MAY_CHANGE and now.get(k) != v]


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; its config must match ``cfg``.

    Returns:
        ``state`` (a :class:`TrainState`), ``trainable``, ``optimizer``, ``scheduler`` and ``rng``.
    """
    import torch

    if not (path / "state.json").is_file():
        raise InputError(f"--resume given but {path} holds no checkpoint: drop --resume to start fresh")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    diff = checkpoint_differs(path, cfg, state)
    if diff:
        was = ", ".join(f"{k}={state['config'][k]!r}" for k in diff)
        raise ConfigError(
            f"--resume with a config that differs from the checkpoint's in {', '.join(diff)}: "
            f"use the same values (checkpoint: {was}) or a new --output"
        )
    return {
        "state": TrainState.from_dict(state),
        "trainable": torch.load(path / "trainable.pt", weights_only=True),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True),
    }


def check_output(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run, or to restart over checkpoints without --resume."""
    if (out / META_FILE).is_file() and not resume:
        raise InputError(f"{out} already holds a trained generator: pass a new --output or delete it")
    if (out / "checkpoints" / "last").is_dir() and not resume:
        raise InputError(f"{out} holds checkpoints of an unfinished run: pass --resume to continue it, or delete {out}")


def _on_step(step: int) -> None:
    """Called after every optimizer step; tests replace it to simulate Ctrl-C at a given step."""


# -------------------------------------------------------------------------------------- output


def plot_loss(history: list[dict[str, Any]], evals: list[dict[str, Any]], path: Path) -> None:
    """Training loss per step and validation loss per evaluation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss", lw=1)
    ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_output(out: Path, model: Any, tokenizer: Any, cfg: TrainConfig, meta: AdapterMeta,
                history: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    """Write the final artifact atomically; the checkpoints move in last, when all else is written."""
    import os

    with atomic_dir(out, ARTIFACT) as tmp:
        model.save_pretrained(tmp)
        sort_target_modules(tmp)
        tokenizer.save_pretrained(tmp)
        write_adapter_meta(tmp, meta)
        plot_loss(history, evals, tmp / "loss_curve.png")
        if cfg.merge and cfg.method != "full":
            merged = model.merge_and_unload()
            merged.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
        for name in ("checkpoints", "tensorboard", "snapshots"):
            if (out / name).exists():
                os.rename(out / name, tmp / name)


# ----------------------------------------------------------------------------------------- run


@dataclass
class TrainState:
    """A run's progress, saved as ``checkpoints/last/state.json`` (these keys, as plain JSON) and
    restored from it by ``--resume``."""

    step: int = 0  # optimizer steps done
    history: list[dict[str, Any]] = field(default_factory=list)  # per step: step, loss, lr, rss_mb
    evals: list[dict[str, Any]] = field(default_factory=list)  # per evaluation: step, metrics, peak_rss_mb
    best: dict[str, Any] | None = None  # step, value (of metric_for_best) and val_loss of the best evaluation
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    train_seconds: float = 0.0
    train_examples: int = 0  # over all processes
    train_target_tokens: int = 0
    train_tokens: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the TrainConfig that started the run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """A state read back from ``state.json``; checkpoints written before ``train_tokens`` existed count it from 0."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass
class EvalSet:
    """The validation subset: encoded examples for the loss, and the first ``eval_generate`` of
    them as model texts with their gold answers for EM/F1."""

    examples: list[dict[str, Any]]
    texts: list[str]
    answers: list[list[str]]
    answerable: list[bool]


@dataclass
class Trainer:
    """What :func:`setup` prepares for :func:`fit`, :func:`validate` and :func:`finish`."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    main: bool  # the main process: it evaluates and writes
    rank: int
    world: int
    bf16: bool
    manifest: dict[str, Any]  # the dataset's
    template: Any
    model: Any  # as prepared by accelerate (DDP-wrapped with several processes)
    raw: Any  # the unwrapped model
    tokenizer: Any
    kind: str
    base_dir: Path
    train_ex: list[dict[str, Any]]
    train_cut: int  # training prompts cut to max_length
    lengths: list[int]  # tokens per training example (length grouping)
    per_epoch: int  # micro-batches per epoch and process
    total_steps: int
    eval_every: int
    evalset: EvalSet | None  # None: the dataset has no validation examples
    params: list[Any]
    optimizer: Any
    scheduler: Any
    state: TrainState
    writer: Any  # TensorBoard SummaryWriter or None


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train the generator as configured: setup -> fit -> finish. Returns a summary (also saved in
    rag_pipeline.json), or ``{"status": "interrupted", ...}`` after Ctrl-C saved a checkpoint.

    Raises:
        InputError, ConfigError, DeviceError: bad dataset, config or device (one-line messages).
    """
    with stops_like_ctrl_c():  # a signal while loading or during the base's evaluation stops the run too (nothing to save yet)
        t = setup(cfg)
        if not t.state.evals:
            validate(t, 0)  # the untrained base, on the same subset: the baseline the tuned model must beat
        status = fit(t)
    if status == "interrupted":
        return {"status": status, "step": t.state.step, "checkpoint": str(t.out / "checkpoints" / "last")}
    return finish(t, status)


@contextlib.contextmanager
def stops_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler or a session ending the process), and SIGINT where the shell that started
    the run in the background left it ignored (``cmd &`` in a script), stop training as Ctrl-C does: a checkpoint
    of the last completed step, then ``--resume``. The previous handlers come back afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, interrupt)
    if before[signal.SIGINT] is signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def setup(cfg: TrainConfig) -> Trainer:
    """Check the output, read the dataset, load and wrap the model, restore a checkpoint with --resume."""
    import torch
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    if not cfg.output:
        raise ConfigError("output is empty: pass --output DIR for the trained adapter")
    out = Path(cfg.output)
    check_separate([cfg.dataset], out)
    prepare_target(out, ARTIFACT)
    accelerator = Accelerator(cpu=resolve_device(cfg.device).type == "cpu")
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    check_output(out, cfg.resume)
    ckpt = load_checkpoint(out / "checkpoints" / "last", cfg) if cfg.resume else None
    bf16 = bf16_supported(device) if cfg.bf16 == "auto" else cfg.bf16 == "true"
    manifest, ds = load_raft(cfg.dataset)
    template = recorded_template(manifest.get("template", "raft-v1"), manifest.get("template_text"), f"dataset {cfg.dataset}")
    torch.manual_seed(cfg.seed)  # LoRA init and dropout draw from torch's global generator
    model, tokenizer, kind, base_dir = setup_model(cfg, device)
    train_ex, train_cut = encode_split(model_texts(ds["train"], tokenizer, template), ds["train"]["completion"], tokenizer, kind, cfg.max_length)
    evalset = eval_set(validation_rows(ds, cfg.dataset, cfg), tokenizer, kind, template, cfg)
    if evalset is not None and not evalset.texts and cfg.metric_for_best != "val_loss":
        raise ConfigError(f"metric_for_best is {cfg.metric_for_best} but the validation rows of {cfg.dataset} hold no short answers "
                          "(summaries and JSON answers only): pass --metric-for-best val_loss")
    if train_cut:
        log.warning("%d of %d training prompts were longer than max_length %d and were cut in the middle",
                    train_cut, len(train_ex), cfg.max_length)
    if cfg.pack_shared:
        train_ex = packed_units(train_ex, ds["train"], kind, model)
    lengths = [sequence_tokens(e, kind) for e in train_ex]
    per_epoch = len(micro_batches(lengths, cfg.batch_size, cfg.seed, 0, rank, world))
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    state = TrainState(config=to_dict(cfg))
    if ckpt is not None:
        load_trainable_state(model, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
    model, optimizer = accelerator.prepare(model, optimizer)
    return Trainer(
        cfg=cfg, out=out, accelerator=accelerator, main=accelerator.is_main_process, rank=rank, world=world, bf16=bf16,
        manifest=manifest, template=template, model=model, raw=accelerator.unwrap_model(model), tokenizer=tokenizer, kind=kind,
        base_dir=base_dir, train_ex=train_ex, train_cut=train_cut, lengths=lengths, per_epoch=per_epoch, total_steps=total_steps,
        eval_every=cfg.eval_steps or max(1, math.ceil(per_epoch / cfg.grad_accum)), evalset=evalset, params=params,
        optimizer=optimizer, scheduler=scheduler, state=state,
        writer=tensorboard_writer(out) if cfg.tensorboard and accelerator.is_main_process else None,
    )


def fit(t: Trainer) -> str:
    """The optimizer steps from ``t.state.step`` to the end, validating every ``eval_every`` steps.

    Returns:
        The status: finished, early_stopped, time_budget, or interrupted (Ctrl-C; the last
        completed step was checkpointed).
    """
    import torch
    from tqdm import tqdm

    cfg, state, device = t.cfg, t.state, t.accelerator.device
    t.model.train()
    started = time.monotonic()
    status = "finished"
    batches_cache: dict[int, list[list[int]]] = {}
    bar = tqdm(total=t.total_steps, initial=state.step, disable=not (t.main and cfg.progress), desc="train", unit="step")
    step = state.step
    rng_at_step = rng_state()
    try:
        while step < t.total_steps:
            t0 = time.perf_counter()
            group = step_micro_batches(t, step, batches_cache)
            n_target = sum(sum(tok != -100 for tok in e["labels"]) for b in group for e in b)
            step_loss = 0.0
            for j, examples in enumerate(group):
                batch = {k: v.to(device) for k, v in train_collate(t, examples).items()}
                sync = t.accelerator.no_sync(t.model) if j < len(group) - 1 else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                        loss_sum, _ = batch_loss(t.model, batch, t.kind)
                    loss = loss_sum / n_target  # mean over the whole step's target tokens
                    t.accelerator.backward(loss)
                step_loss += float(loss.detach())
            if cfg.max_grad_norm:
                t.accelerator.clip_grad_norm_(t.params, cfg.max_grad_norm)
            t.optimizer.step()
            t.scheduler.step()
            t.optimizer.zero_grad(set_to_none=True)
            step += 1
            state.step = step
            rng_at_step = rng_state()  # what a checkpoint at this step boundary must restore
            record_step(t, group, n_target, step_loss, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", ex_s=f"{state.train_examples / state.train_seconds:.2f}",
                            tok_s=f"{state.train_tokens / state.train_seconds:.0f}",
                            target_tok_s=f"{state.train_target_tokens / state.train_seconds:.1f}")
            release_free_memory()
            _on_step(step)
            over_time = bool(cfg.max_minutes) and time.monotonic() - started > 60 * cfg.max_minutes
            if step % t.eval_every == 0 or step == t.total_steps or over_time:
                if validate(t, step):
                    status = "early_stopped"
                    break
            if over_time:
                status = "time_budget"
                break
    except KeyboardInterrupt:
        bar.close()
        if t.main:
            # The weights hold the last completed step; a half-accumulated step is dropped and redone.
            state.step = step
            save_checkpoint(t.out / "checkpoints" / "last", t.raw, t.optimizer, t.scheduler, state, rng_at_step)
            log.warning("interrupted at step %d: checkpoint saved; rerun with --resume to continue", step)
        return "interrupted"
    bar.close()
    return status


def step_micro_batches(t: Trainer, step: int, cache: dict[int, list[list[int]]]) -> list[list[dict[str, Any]]]:
    """The ``grad_accum`` micro-batches of optimizer step ``step`` (an epoch's order is drawn once, cached in ``cache``)."""
    group = []
    for g in range(step * t.cfg.grad_accum, (step + 1) * t.cfg.grad_accum):
        epoch, pos = divmod(g, t.per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = micro_batches(t.lengths, t.cfg.batch_size, t.cfg.seed, epoch, t.rank, t.world)
        group.append([t.train_ex[i] for i in cache[epoch][pos]])
    return group


def record_step(t: Trainer, group: list[list[dict[str, Any]]], n_target: int, loss: float, seconds: float) -> None:
    """Add a finished optimizer step to the state's counters and history (and TensorBoard)."""
    state, lr = t.state, t.scheduler.get_last_lr()[0]
    state.train_seconds += seconds
    state.train_examples += sum(e.get("n_examples", 1) for b in group for e in b) * t.world
    state.train_target_tokens += n_target * t.world
    state.train_tokens += sum(sequence_tokens(e, t.kind) for b in group for e in b) * t.world
    state.history.append({"step": state.step, "loss": loss, "lr": lr, "rss_mb": rss_mb()})
    if t.writer is not None:
        t.writer.add_scalar("train/loss", loss, state.step)
        t.writer.add_scalar("train/lr", lr, state.step)


def validate(t: Trainer, step: int) -> bool:
    """Evaluate on the main process and checkpoint; returns whether to stop early (the same on every process).

    Without validation examples only the checkpoint is written (for --resume). With them: the
    evaluation is added to the state, a better one replaces ``checkpoints/best``, and after
    step 0 ``checkpoints/last`` (and, with ``--snapshots``, ``snapshots/step-N``) is written.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    cfg, state, stop = t.cfg, t.state, False
    last = t.out / "checkpoints" / "last"
    if t.main and t.evalset is None and step > 0:
        save_checkpoint(last, t.raw, t.optimizer, t.scheduler, state, rng_state())
    elif t.main and t.evalset is not None:
        ev = t.evalset
        metrics = {"step": step, **evaluate(t.raw, t.tokenizer, t.kind, ev.examples, ev.texts, ev.answers, ev.answerable, cfg, t.bf16),
                   "peak_rss_mb": peak_rss_mb()}
        state.evals.append(metrics)
        log.info("step %d: %s", step, {k: round(v, 4) for k, v in metrics.items() if v is not None})
        if t.writer is not None:
            for k in ("val_loss", "em", "f1"):
                if metrics[k] is not None:  # EM/F1: None without short-answer rows (a summary-only dataset)
                    t.writer.add_scalar(f"eval/{k}", metrics[k], step)
        if step > 0:
            if improved(cfg.metric_for_best, metrics, state.best):
                state.best = {"step": step, "value": metrics[cfg.metric_for_best], "val_loss": metrics["val_loss"]}
                state.bad_evals = 0
                with atomic_dir(t.out / "checkpoints" / "best", CHECKPOINT) as tmp:
                    torch.save(trainable_state(t.raw), tmp / "trainable.pt")
            else:
                state.bad_evals += 1
            save_checkpoint(last, t.raw, t.optimizer, t.scheduler, state, rng_state())
            if cfg.snapshots:
                meta = dataclasses.replace(adapter_meta(t), snapshot_step=step, train_examples_seen=state.train_examples, evals=state.evals)
                save_snapshot(t.out / "snapshots" / f"step-{step}", t.raw, t.tokenizer, meta)
        stop = bool(cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience)
    flag = [stop]
    broadcast_object_list(flag)  # the main process decides for all
    return flag[0]


def finish(t: Trainer, status: str) -> dict[str, Any]:
    """Restore the best weights, write the output directory and return the summary (main process)."""
    import torch

    t.accelerator.wait_for_everyone()
    if t.writer is not None:
        t.writer.close()
    state, step = t.state, t.state.step
    if not t.main:
        return {"status": status, "step": step}
    best = state.best
    if best is not None and best["step"] != step:
        load_trainable_state(t.raw, torch.load(t.out / "checkpoints" / "best" / "trainable.pt", weights_only=True))
    evals = state.evals  # empty without validation examples
    chosen = next(e for e in evals if e["step"] == best["step"]) if best else evals[-1] if evals else None
    seconds = max(state.train_seconds, 1e-9)
    summary = {
        "status": status,
        "steps": step,
        "total_steps": t.total_steps,
        "best_step": chosen["step"] if chosen else step,
        "metric_for_best": t.cfg.metric_for_best,
        "base": {k: evals[0][k] for k in ("val_loss", "em", "f1")} if evals else None,
        "tuned": {k: chosen[k] for k in ("val_loss", "em", "f1")} if chosen else None,
        "eval_examples": len(t.evalset.examples) if t.evalset is not None else 0,
        "train_examples_per_s": state.train_examples / seconds,
        "train_target_tokens_per_s": state.train_target_tokens / seconds,
        "train_tokens_per_s": state.train_tokens / seconds,
        "train_seconds": state.train_seconds,
        "train_prompts_cut": t.train_cut,
        "bf16": t.bf16,
        "device": str(t.accelerator.device),
        "processes": t.world,
    }
    meta = dataclasses.replace(adapter_meta(t), metrics=summary, evals=state.evals)
    save_output(t.out, t.raw, t.tokenizer, t.cfg, meta, state.history, state.evals)
    return summary


def adapter_meta(t: Trainer) -> AdapterMeta:
    """What ``rag_pipeline.json`` says of every adapter this run writes (final and snapshots): what ask
    and evaluate need to load it, and where it came from."""
    return AdapterMeta(model_kind=t.kind, method=t.cfg.method, base_model=t.cfg.base_model, base_weights_hash=weights_hash(t.base_dir),
                       template=t.template.name, template_text=template_text(t.template), dataset=str(t.cfg.dataset),
                       dataset_fingerprint=t.manifest.get("fingerprint"), tasks=t.manifest.get("tasks"),
                       extract_schema=t.manifest.get("extract_schema"), config=to_dict(t.cfg))


def sort_target_modules(folder: Path) -> None:
    """peft writes ``target_modules`` in a set's order, which changes with the process's hash seed:
    sort it, so that the same inputs and seed give a byte-identical ``adapter_config.json``."""
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        return  # a full fine-tune: no adapter config
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # as peft writes it


def release_free_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    glibc raises its mmap threshold each time a large mmapped block is freed, after which
    activation-sized blocks come from the heap, whose free space fragments across batches of
    different lengths and is kept: the resident set of a 135M model's LoRA run grew from 9 to 16 GB.
    Trimming after every optimizer step keeps it at the live size; a fixed mmap threshold does too,
    but page-faulting every activation made training 1.5x slower (measured: 0.35 vs 0.53 ex/s).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def rss_mb() -> float:
    """The process's resident set now, in MiB (0 where /proc is absent)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):
        return 0.0


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def save_snapshot(path: Path, model: Any, tokenizer: Any, meta: AdapterMeta) -> None:
    """A loadable adapter directory (weights, tokenizer, rag_pipeline.json) of the current weights."""
    with atomic_dir(path, ARTIFACT) as tmp:
        model.save_pretrained(tmp)
        sort_target_modules(tmp)
        tokenizer.save_pretrained(tmp)
        write_adapter_meta(tmp, meta)


def tensorboard_writer(out: Path) -> Any:
    """A SummaryWriter under OUTPUT/tensorboard; a clear error when tensorboard is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'rag-pipeline[tensorboard]'")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


def main(cfg: TrainConfig | list[str] | None = None) -> int:
    """``rag-pipeline train-generator``: train, print the summary as JSON; 130 when interrupted.

    Given command-line arguments instead of a config (or None: ``sys.argv``), parses them first
    (``rag_pipeline.cli``), as ``from rag_pipeline.train import main; main(sys.argv[1:])`` did.
    """
    import sys

    if not isinstance(cfg, TrainConfig):
        return cli_main(cfg, only="train-generator")
    summary = run(cfg)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    if summary["status"] == "interrupted":
        print("interrupted: a checkpoint was saved; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # python -m rag_pipeline.train, accelerate launch -m ..., torchrun -m ...
    raise SystemExit(cli_main(only="train-generator"))
