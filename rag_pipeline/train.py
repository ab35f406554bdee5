"""``train-generator``: LoRA (or QLoRA, or full) fine-tuning of the generator on a RAFT dataset.

Reads a RAFT dataset directory (``manifest.json`` + ``dataset/``) and writes an output directory
that plain peft loads (``PeftModel.from_pretrained(base, output)``), with the tokenizer,
``rag_pipeline.json`` (base model id and weights hash, prompt template, config, dataset
fingerprint, metrics of the base and the tuned model), ``loss_curve.png`` and, with ``--merge``,
a merged full model in ``merged/``.

The loop is a plain accelerate loop (``run``: setup -> train -> save), so
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

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, prepare_target, write_json
from rag_pipeline.config import opt, to_dict
from rag_pipeline.errors import ConfigError, DeviceError, InputError
from rag_pipeline.models import SMOLLM2_ID

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "prompt", "completion", "answer")
# Fields that may change between an interrupted run and its --resume without changing the result.
RESUME_MAY_CHANGE = ("resume", "max_minutes", "tensorboard", "merge", "device", "progress", "snapshots")
# What train-generator may replace: a finished output, or the checkpoints of an unfinished run.
ARTIFACT = Artifact("a train-generator output", "rag_pipeline.json", "rag-generator",
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
    lora_r: int = opt(16, "LoRA rank; 16 is enough to learn the answer style, 64 adds little")
    lora_alpha: int = opt(32, "LoRA scaling alpha (update scale alpha/r); 2*r is the usual choice")
    lora_dropout: float = opt(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] = opt(help="modules to adapt; empty = the attention projections of the architecture", factory=list)
    learning_rate: float = opt(2e-4, "peak AdamW learning rate (LoRA tolerates ~10x a full fine-tune's)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    epochs: float = opt(3.0, "passes over the train split (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run; 0 = from epochs")
    max_minutes: float = opt(0.0, "stop (evaluate and save) after this many minutes of this invocation; 0 = no limit")
    batch_size: int = opt(4, "examples per micro-batch (per process)")
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
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device is {self.device!r}: choose auto, cpu or cuda")


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


def encode_split(rows: Any, tokenizer: Any, kind: str, template: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Encode every row; return (examples, number of examples whose prompt was cut)."""
    from rag_pipeline.generator import encode_example
    from rag_pipeline.prompt import to_model_text

    examples, cut = [], 0
    for prompt, completion in zip(rows["prompt"], rows["completion"]):
        ex = encode_example(tokenizer, kind, to_model_text(tokenizer, template, prompt), completion, max_length)
        cut += ex["prompt_cut"] > 0
        examples.append(ex)
    return examples, cut


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


def setup_model(cfg: TrainConfig, device: Any, kind_hint: str | None = None) -> tuple[Any, Any, str, Path]:
    """Load the base and wrap it for ``cfg.method``; return (model, tokenizer, kind, base_dir)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from rag_pipeline.generator import default_target_modules, load_tokenizer, model_kind
    from rag_pipeline.models import resolve_model

    base_dir = resolve_model(cfg.base_model)
    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=cfg.trust_remote_code)
    kind = model_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": cfg.trust_remote_code}
    if cfg.method == "qlora":
        kwargs.update(qlora_kwargs(device))
    model = auto.from_pretrained(str(base_dir), **kwargs)
    tokenizer = load_tokenizer(base_dir, kind, cfg.trust_remote_code)
    if cfg.method == "full":
        return model.to(device), tokenizer, kind, base_dir
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or default_target_modules(config.model_type),
        task_type="SEQ_2_SEQ_LM" if kind == "seq2seq" else "CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"LoRA target modules {lora.target_modules} do not fit {config.model_type}: {str(e).splitlines()[0]}; fix --lora-target-modules") from None
    model.peft_config["default"].base_model_name_or_path = cfg.base_model
    return model.to(device) if cfg.method == "lora" else model, tokenizer, kind, base_dir


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

    from rag_pipeline.generator import batch_loss, collate, generate_answers
    from rag_pipeline.metrics import squad2_scores

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
                             autocast_bf16=bf16 and device.type == "cuda")
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


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], rng: Any) -> None:
    """Write a resumable checkpoint directory atomically."""
    import torch

    with atomic_dir(path, CHECKPOINT) as tmp:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", state)


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; its config must match ``cfg``."""
    import torch

    if not (path / "state.json").is_file():
        raise InputError(f"--resume given but {path} holds no checkpoint: drop --resume to start fresh")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    now = to_dict(cfg)
    diff = [k for k, v in state["config"].items() if k not in RESUME_MAY_CHANGE and now.get(k) != v]
    if diff:
        was = ", ".join(f"{k}={state['config'][k]!r}" for k in diff)
        raise ConfigError(
            f"--resume with a config that differs from the checkpoint's in {', '.join(diff)}: "
            f"use the same values (checkpoint: {was}) or a new --output"
        )
    return {
        "state": state,
        "trainable": torch.load(path / "trainable.pt", weights_only=True),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True),
    }


def check_output(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run, or to restart over checkpoints without --resume."""
    if (out / "rag_pipeline.json").is_file() and not resume:
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


def save_output(out: Path, model: Any, tokenizer: Any, cfg: TrainConfig, meta: dict[str, Any],
                history: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    """Write the final artifact atomically; the checkpoints move in last, when all else is written."""
    import os

    with atomic_dir(out, ARTIFACT) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "rag_pipeline.json", meta)
        plot_loss(history, evals, tmp / "loss_curve.png")
        if cfg.merge and cfg.method != "full":
            merged = model.merge_and_unload()
            merged.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
        for name in ("checkpoints", "tensorboard", "snapshots"):
            if (out / name).exists():
                os.rename(out / name, tmp / name)


# ----------------------------------------------------------------------------------------- run


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train the generator as configured; return a summary (also saved in rag_pipeline.json).

    Raises:
        InputError, ConfigError, DeviceError: bad dataset, config or device (one-line messages).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from rag_pipeline.generator import batch_loss, bf16_supported, collate, resolve_device
    from rag_pipeline.models import weights_hash
    from rag_pipeline.prompt import get_template, to_model_text

    # ---- setup
    if not cfg.output:
        raise ConfigError("output is empty: pass --output DIR for the trained adapter")
    out = Path(cfg.output)
    check_separate([cfg.dataset], out)
    prepare_target(out, ARTIFACT)
    device = resolve_device(cfg.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    device = accelerator.device
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    check_output(out, cfg.resume)
    ckpt = load_checkpoint(out / "checkpoints" / "last", cfg) if cfg.resume else None
    bf16 = bf16_supported(device) if cfg.bf16 == "auto" else cfg.bf16 == "true"
    manifest, ds = load_raft(cfg.dataset)
    template = get_template(manifest.get("template", "raft-v1"))
    torch.manual_seed(cfg.seed)  # LoRA init and dropout draw from torch's global generator
    model, tokenizer, kind, base_dir = setup_model(cfg, device)
    train_ex, train_cut = encode_split(ds["train"], tokenizer, kind, template, cfg.max_length)
    val = validation_rows(ds, cfg.dataset, cfg)
    val_ex, _ = encode_split(val, tokenizer, kind, template, cfg.max_length) if val is not None else ([], 0)
    gen = val.select(range(min(cfg.eval_generate, len(val)))) if val is not None else None
    val_texts = [to_model_text(tokenizer, template, p) for p in gen["prompt"]] if gen is not None else []
    val_answerable = (gen["answerable"] if "answerable" in gen.column_names else [bool(a) for a in gen["answer"]]) if gen is not None else []
    if train_cut:
        log.warning("%d of %d training prompts were longer than max_length %d and were cut in the middle",
                    train_cut, len(train_ex), cfg.max_length)
    lengths = [len(e["input_ids"]) + (len(e["labels"]) if kind == "seq2seq" else 0) for e in train_ex]
    per_epoch = len(micro_batches(lengths, cfg.batch_size, cfg.seed, 0, rank, world))
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)
    eval_every = cfg.eval_steps or max(1, math.ceil(per_epoch / cfg.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    state: dict[str, Any] = {"step": 0, "history": [], "evals": [], "best": None, "bad_evals": 0, "train_seconds": 0.0,
                             "train_examples": 0, "train_target_tokens": 0, "train_tokens": 0, "config": to_dict(cfg)}
    if ckpt is not None:
        load_trainable_state(model, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"])
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    writer = tensorboard_writer(out) if cfg.tensorboard and main else None

    def snapshot_meta(step: int) -> dict[str, Any]:
        """rag_pipeline.json of a snapshot: what ask/evaluate need, and the evaluations so far."""
        return {"kind": "rag-generator", "model_kind": kind, "method": cfg.method, "base_model": cfg.base_model,
                "base_weights_hash": weights_hash(base_dir), "template": template.name, "dataset": str(cfg.dataset),
                "dataset_fingerprint": manifest.get("fingerprint"), "config": to_dict(cfg), "snapshot_step": step,
                "train_examples_seen": state["train_examples"], "evals": state["evals"]}

    def run_eval(step: int) -> bool:
        """Evaluate on the main process, checkpoint, and return whether to stop early."""
        stop = [False]
        if main and val is None and step > 0:  # no validation examples: only the checkpoint, for --resume
            save_checkpoint(out / "checkpoints" / "last", raw, optimizer, scheduler, state, torch.get_rng_state())
        elif main and val is not None:
            metrics = {"step": step, **evaluate(raw, tokenizer, kind, val_ex, val_texts, gen["answer"], val_answerable, cfg, bf16),
                       "peak_rss_mb": peak_rss_mb()}
            state["evals"].append(metrics)
            log.info("step %d: %s", step, {k: round(v, 4) for k, v in metrics.items()})
            if writer is not None:
                for k in ("val_loss", "em", "f1"):
                    writer.add_scalar(f"eval/{k}", metrics[k], step)
            if step > 0:
                if improved(cfg.metric_for_best, metrics, state["best"]):
                    state["best"] = {"step": step, "value": metrics[cfg.metric_for_best], "val_loss": metrics["val_loss"]}
                    state["bad_evals"] = 0
                    with atomic_dir(out / "checkpoints" / "best", CHECKPOINT) as tmp:
                        torch.save(trainable_state(raw), tmp / "trainable.pt")
                else:
                    state["bad_evals"] += 1
                save_checkpoint(out / "checkpoints" / "last", raw, optimizer, scheduler, state, torch.get_rng_state())
                if cfg.snapshots:
                    save_snapshot(out / "snapshots" / f"step-{step}", raw, tokenizer, snapshot_meta(step))
            stop[0] = bool(cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience)
        broadcast_object_list(stop)
        return stop[0]

    # ---- train
    if not state["evals"]:
        run_eval(0)  # the untrained base, on the same subset: the baseline the tuned model must beat
    model.train()
    started = time.monotonic()
    status = "finished"
    batches_cache: dict[int, list[list[int]]] = {}
    bar = tqdm(total=total_steps, initial=state["step"], disable=not (main and cfg.progress), desc="train", unit="step")
    step = state["step"]
    rng_at_step = torch.get_rng_state()
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            group = []
            for g in range(step * cfg.grad_accum, (step + 1) * cfg.grad_accum):
                epoch, pos = divmod(g, per_epoch)
                if epoch not in batches_cache:
                    batches_cache = {epoch: micro_batches(lengths, cfg.batch_size, cfg.seed, epoch, rank, world)}
                group.append([train_ex[i] for i in batches_cache[epoch][pos]])
            n_target = sum(sum(t != -100 for t in e["labels"]) for b in group for e in b)
            step_loss = 0.0
            for j, examples in enumerate(group):
                batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id, kind).items()}
                sync = accelerator.no_sync(model) if j < len(group) - 1 else _nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss_sum, _ = batch_loss(model, batch, kind)
                    loss = loss_sum / n_target  # mean over the whole step's target tokens
                    accelerator.backward(loss)
                step_loss += float(loss.detach())
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["step"] = step
            rng_at_step = torch.get_rng_state()  # what a checkpoint at this step boundary must restore
            dt = time.perf_counter() - t0
            state["train_seconds"] += dt
            state["train_examples"] += sum(len(b) for b in group) * world
            state["train_target_tokens"] += n_target * world
            state["train_tokens"] = state.get("train_tokens", 0) + sum(len(e["input_ids"]) + (len(e["labels"]) if kind == "seq2seq" else 0) for b in group for e in b) * world
            state["history"].append({"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "rss_mb": rss_mb()})
            if writer is not None:
                writer.add_scalar("train/loss", step_loss, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", ex_s=f"{state['train_examples'] / state['train_seconds']:.2f}",
                            tok_s=f"{state['train_tokens'] / state['train_seconds']:.0f}",
                            target_tok_s=f"{state['train_target_tokens'] / state['train_seconds']:.1f}")
            release_free_memory()
            _on_step(step)
            over_time = bool(cfg.max_minutes) and time.monotonic() - started > 60 * cfg.max_minutes
            if step % eval_every == 0 or step == total_steps or over_time:
                if run_eval(step):
                    status = "early_stopped"
                    break
            if over_time:
                status = "time_budget"
                break
    except KeyboardInterrupt:
        bar.close()
        if main:
            # The weights hold the last completed step; a half-accumulated step is dropped and redone.
            state["step"] = step
            save_checkpoint(out / "checkpoints" / "last", raw, optimizer, scheduler, state, rng_at_step)
            log.warning("interrupted at step %d: checkpoint saved; rerun with --resume to continue", step)
        return {"status": "interrupted", "step": step, "checkpoint": str(out / "checkpoints" / "last")}
    bar.close()

    # ---- save
    accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    if not main:
        return {"status": status, "step": step}
    best = state["best"]
    if best is not None and best["step"] != step:
        load_trainable_state(raw, torch.load(out / "checkpoints" / "best" / "trainable.pt", weights_only=True))
    evals = state["evals"]  # empty without validation examples
    chosen = next(e for e in evals if e["step"] == best["step"]) if best else evals[-1] if evals else None
    summary = {
        "status": status,
        "steps": step,
        "total_steps": total_steps,
        "best_step": chosen["step"] if chosen else step,
        "metric_for_best": cfg.metric_for_best,
        "base": {k: evals[0][k] for k in ("val_loss", "em", "f1")} if evals else None,
        "tuned": {k: chosen[k] for k in ("val_loss", "em", "f1")} if chosen else None,
        "eval_examples": len(val_ex),
        "train_examples_per_s": state["train_examples"] / max(state["train_seconds"], 1e-9),
        "train_target_tokens_per_s": state["train_target_tokens"] / max(state["train_seconds"], 1e-9),
        "train_tokens_per_s": state.get("train_tokens", 0) / max(state["train_seconds"], 1e-9),
        "train_seconds": state["train_seconds"],
        "train_prompts_cut": train_cut,
        "bf16": bf16,
        "device": str(device),
        "processes": world,
    }
    meta = {
        "kind": "rag-generator",
        "model_kind": kind,
        "method": cfg.method,
        "base_model": cfg.base_model,
        "base_weights_hash": weights_hash(base_dir),
        "template": template.name,
        "dataset": str(cfg.dataset),
        "dataset_fingerprint": manifest.get("fingerprint"),
        "config": to_dict(cfg),
        "metrics": summary,
        "evals": state["evals"],
    }
    save_output(out, raw, tokenizer, cfg, meta, state["history"], state["evals"])
    return summary


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


def save_snapshot(path: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """A loadable adapter directory (weights, tokenizer, rag_pipeline.json) of the current weights."""
    with atomic_dir(path, ARTIFACT) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "rag_pipeline.json", meta)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def tensorboard_writer(out: Path) -> Any:
    """A SummaryWriter under OUTPUT/tensorboard; a clear error when tensorboard is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'rag-pipeline[tensorboard]'")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m rag_pipeline.train`` and ``accelerate launch -m rag_pipeline.train``."""
    import argparse
    import sys

    from rag_pipeline.config import add_arguments, build_config, overrides_from_args
    from rag_pipeline.errors import RagError

    parser = argparse.ArgumentParser(prog="train-generator", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML file with TrainConfig keys (see configs/train.yaml)")
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(build_config(TrainConfig, args.config, overrides_from_args(TrainConfig, args)))
    except RagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
