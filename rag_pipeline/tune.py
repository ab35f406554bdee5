"""``rag-pipeline tune``: a folder of documents to a tuned, calibrated, evaluated adapter, in one command.

``tune`` only composes the stage commands; each writes its own artifact under ``OUTPUT`` exactly as
the command alone would, so any of them can be opened and re-run by hand:

=========  ====================  ==================================================================
stage      command               artifact
=========  ====================  ==================================================================
index      build-index           ``OUTPUT/index``
dataset    build-raft-dataset    ``OUTPUT/dataset`` (questions written from the documents, split by
                                 document) and ``OUTPUT/heldout`` (its validation and test questions
                                 as QA files: documents the adapter never trains on)
train      train-generator       ``OUTPUT/adapter`` (from the reference adapter; checkpoints resume)
calibrate  calibrate             the abstention threshold, in ``OUTPUT/adapter/rag_pipeline.json``
evaluate   evaluate              ``OUTPUT/evaluation`` (base, reference and tuned adapter on the held-out
                                 questions; ``OUTPUT/evaluation-qa`` on your own QA's held-out part)
export     export                ``OUTPUT/export`` (with ``--export``)
=========  ====================  ==================================================================

**The plan.** ``--budget`` (``30m``, ``2h``; ``quick`` = 15 minutes; ``full`` = the full recipe, no time
limit) is spread over the stages from a short probe of this machine (seconds per embedded chunk,
per training example, per answered question): how many questions to write, how many training
steps, how many held-out questions calibrate and evaluate. The plan is printed first and stored in
``OUTPUT/tune.json``; a rerun reuses it, so a rerun trains exactly the same steps.

**Build-tool behaviour.** ``tune.json`` records, per stage, a key of its inputs (the fingerprints the
upstream artifacts carry) and settings. A rerun skips every stage whose key is unchanged and whose
artifact is there, and says so; an interrupted run (Ctrl-C, ``kill -9``) resumes at its stage, and
training at its last checkpoint; ``--from STAGE`` rebuilds from a stage on.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import re
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline import train as train_stage
from rag_pipeline.adapter_meta import META_FILE
from rag_pipeline.answer.abstention import mode_of
from rag_pipeline.answer.ask import Pipeline
from rag_pipeline.atomic import aside_name, aside_of_dead, atomic_file, check_separate, json_line, output_lock, write_json
from rag_pipeline.config import build_config, coerce, opt, to_dict
from rag_pipeline.data import raft
from rag_pipeline.data.raft import SPLIT_OF_STEM, RaftConfig, split_of
from rag_pipeline.device import bf16_supported, inference_dtype, resolve_device
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.eval import calibrate, evaluate
from rag_pipeline.eval.calibrate import CalibrateConfig
from rag_pipeline.eval.evaluate import EvaluateConfig, _table, fmt
from rag_pipeline.export import ExportConfig
from rag_pipeline.export import run as export_run
from rag_pipeline.generator import batch_loss, collate, encode_example, generate_answers, load_generator
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.embed import load_embedder
from rag_pipeline.index.ingest import IngestReport, iter_files, read_documents
from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
from rag_pipeline.qa import load_qa
from rag_pipeline.train import TrainConfig, setup_model

log = logging.getLogger(__name__)

STAGES = ("index", "dataset", "train", "calibrate", "evaluate", "export")
KIND = "tune"
MANIFEST = "tune.json"
SCHEMA_VERSION = 1
PRESETS = {"quick": 15 * 60.0, "full": None}
MIN_DOCUMENTS = 10  # held-out documents for calibration and evaluation need a few to choose from
MIN_HELD_OUT = 20  # questions calibrate and evaluate at the least
YES_NO_QUESTIONS = 200  # yes/no questions written from the validation documents to measure the tuned adapter's lean (one
# forward pass each, about a quarter of an answer's time)
MIN_BUDGET_S = 300  # below this nothing fits on any machine; the probe's measure gives the real minimum
# The question mix and split (documents, not questions, are split)
SPLIT_RATIO = [0.7, 0.15, 0.15]
# The probe's prompts: passages as long as the documents', as many as training and answering show
PROMPT_FRAME_TOKENS = 60  # a prompt's instructions, question and answer around its passages
CHUNK_CHARS = 1000  # a full chunk: all-MiniLM's 256 word pieces
CHARS_PER_CHUNK = 900  # all-MiniLM's 256-token chunks with 32 overlapping, at ~4 characters a token
MAX_EPOCHS = 4  # passes over a small corpus's questions when the budget allows more than `epochs`
SAFETY = 0.9  # the plan fills this share of the budget: the rest absorbs the probe's error
STAGE_LOAD_S = 20.0  # a stage's start: loading its models (the generator twice for evaluate's three systems: 3x)
EXPORT_S = 60.0  # merging the adapter and writing the file


@dataclass
class TuneConfig:
    """Settings of ``tune`` (defaults < ``--config`` YAML, e.g. configs/tune.yaml < flags). The YAML may
    also hold a mapping of settings for each stage (``index:``, ``raft:``, ``train:``, ``calibrate:``,
    ``evaluate:``, ``export:``), the stage command's own keys; tune sets the paths between them."""

    paths: list[str] = opt(factory=list, help="document files and folders (what build-index reads)")
    output: str = opt("runs/tune", "output folder: index/, dataset/, heldout/, adapter/, evaluation/, export/ and tune.json")
    qa: str = opt("", "your own questions (any format build-raft-dataset reads), mixed with the generated ones, split by "
                      "document like them, and reported on their own")
    budget: str = opt("30m", "wall time of the whole run: 30m, 2h, 1h30m; quick (15m); full (the full recipe without a time "
                             "limit: questions from every chunk, `epochs` passes; what a GPU runs)")
    from_stage: str = opt("", f"rebuild from this stage on even if unchanged: {', '.join(STAGES)}", flag="--from")
    dry_run: bool = opt(False, "print the plan (measured by a short probe) and stop")
    export: Literal["", "merged", "gguf"] = opt("", "also export the tuned adapter: merged (Hugging Face folder) or gguf (llama.cpp)")
    reference: str = opt(REFERENCE_ADAPTER, "the reference adapter: training starts from it, it reads the written questions "
                                            "back (the round trip that keeps a question), and the report compares against it")
    base_model: str = opt(SMOLLM2_ID, "base generator (the reference adapter's base)")
    questions: int = opt(0, "questions to write from the documents; 0 = as many as the budget allows")
    yes_no: float = opt(0.25, "share of the written questions that are yes/no questions (half yes, half no)")
    unanswerable: float = opt(0.15, "share written as unanswerable questions (abstention targets: abstention for documents-only data)")
    epochs: float = opt(2.0, "passes over the training questions (the budget may allow fewer)")
    learning_rate: float = opt(2e-4, "peak learning rate (continuing from the reference adapter wants less than a fresh LoRA)")
    device: str = opt("auto", "auto (CUDA if present), cpu or cuda")
    seed: int = opt(0, "seed of every stage")
    index: dict = opt(factory=dict, help="YAML only: more build-index settings")
    raft: dict = opt(factory=dict, help="YAML only: more build-raft-dataset settings")
    train: dict = opt(factory=dict, help="YAML only: more train-generator settings")
    calibrate: dict = opt(factory=dict, help="YAML only: more calibrate settings")
    evaluate: dict = opt(factory=dict, help="YAML only: more evaluate settings")
    export_settings: dict = opt(factory=dict, help="YAML only: more export settings")

    def __post_init__(self) -> None:
        if self.from_stage and self.from_stage not in STAGES:
            raise ConfigError(f"--from {self.from_stage!r} is not a stage: choose one of {', '.join(STAGES)}")
        parse_budget(self.budget)
        for name in ("yes_no", "unanswerable"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} is {getattr(self, name)}: use a share in [0, 1]")
        if self.yes_no + self.unanswerable > 1:
            raise ConfigError(f"yes_no ({self.yes_no}) + unanswerable ({self.unanswerable}) exceed 1: lower one of them")
        if self.questions < 0 or not (math.isfinite(self.epochs) and math.isfinite(self.learning_rate)) or \
                self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("questions must be >= 0 (0 = from the budget), epochs and learning_rate finite and > 0")
        if self.from_stage == "export" and not self.export:
            raise ConfigError("--from export without --export: add --export to write the export, or choose an earlier stage")
        if not str(self.output).strip():
            raise ConfigError("output is empty: pass --output DIR")
        for name, cls in STAGE_SETTINGS.items():
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            unknown = sorted(set(getattr(self, name)) - known)
            if unknown:
                raise ConfigError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)} under '{name}:' in the tune recipe: "
                                  f"valid keys are {', '.join(sorted(known))}")
            clash = sorted(set(getattr(self, name)) & SET_BY_TUNE[name])
            if clash:
                raise ConfigError(f"{cls.__name__} setting(s) {', '.join(clash)} under '{name}:' in the tune recipe are tune's own "
                                  "(paths between stages, the plan's sizes): remove them")
            unplanned = sorted(set(getattr(self, name)) & UNPLANNED.get(name, set()))
            if unplanned:
                raise ConfigError(f"{cls.__name__} setting(s) {', '.join(unplanned)} under '{name}:' in the tune recipe change what "
                                  "a training step costs, which tune's plan does not model: remove them (build-raft-dataset "
                                  "--share-context and train-generator --pack-shared take them)")
        if self.qa and Path(self.qa).stem in SPLIT_OF_STEM:
            raise ConfigError(f"--qa {self.qa} is named like a split, and build-raft-dataset would keep all of it in that split: tune "
                              "splits your questions by document itself, so copy the file to another name (e.g. my_questions.jsonl)")


# The recipe's per-stage mappings and the config each one fills
STAGE_SETTINGS = {"index": IndexConfig, "raft": RaftConfig, "train": TrainConfig, "calibrate": CalibrateConfig,
                  "evaluate": EvaluateConfig, "export_settings": ExportConfig}


# What tune sets in each stage's config itself (refused in the recipe)
SET_BY_TUNE = {"index": {"paths", "index"},
               "raft": {"index", "qa", "qa_dir", "output", "generator", "generate_questions", "question_yes_no", "question_unanswerable",
                        "split_ratio"},
               "train": {"dataset", "output", "base_model", "init_adapter", "max_steps", "eval_steps", "learning_rate", "resume"},
               "calibrate": {"adapter", "index", "qa", "limit", "base_model"},
               "evaluate": {"index", "qa", "adapter", "no_adapter", "injection", "limit", "output", "base_model"},
               "export_settings": {"adapter", "format", "output"}}
# Settings the plan's time model does not cover (refused in the recipe): packed steps hold a varying number of examples
UNPLANNED = {"raft": {"share_context"}, "train": {"pack_shared"}}


def parse_budget(text: str) -> float | None:
    """Seconds of a budget such as ``30m``, ``2h``, ``1h30m``, ``90s`` or a bare number of minutes;
    ``quick`` is 15 minutes and ``full`` is None (no limit)."""
    text = str(text).strip().lower()
    if text in PRESETS:
        return PRESETS[text]
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or not m or not any(m.groups()):
        raise ConfigError(f"budget {text!r} is not a duration: use 30m, 2h, 1h30m, quick or full")
    h, mi, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


# ---------------------------------------------------------------------------------------------
# What the documents hold, and the probe
# ---------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """What a cheap read of the documents tells the plan."""

    documents: int
    characters: int
    chunks: int  # estimated: build-index's chunking of all-MiniLM's 256 tokens
    sample: str  # text to build the probe's prompts from
    key: str  # the documents' ids, titles and texts


def scan_documents(cfg: TuneConfig) -> Corpus:
    """Read the documents once (no model): their count, size and a key of the files.

    Raises:
        InputError: no path, a missing path, no readable document, or too few documents.
    """
    if not cfg.paths:
        raise InputError("no documents: pass the folder (or files) to tune on, e.g. `rag-pipeline tune docs/ --output runs/tune`")
    files = [name for _, name in iter_files(cfg.paths)]
    if not files:
        raise InputError(f"{', '.join(cfg.paths)} holds no document file (.txt .md .html .json .jsonl .pdf): point tune at your documents")
    report = IngestReport()
    documents = characters = chunks = 0
    sample: list[str] = []
    content = hashlib.sha256()
    held = {"validation": 0, "test": 0}
    for doc in read_documents(cfg.paths, report, **_field_names(cfg)):
        content.update(json.dumps([doc.id, doc.title, doc.text]).encode())
        split = split_of(doc.id, cfg.seed, SPLIT_RATIO)
        held[split] = held.get(split, 0) + 1
        documents += 1
        characters += len(doc.text)
        chunks += max(1, math.ceil(len(doc.text) / CHARS_PER_CHUNK))
        if sum(map(len, sample)) < 20_000:
            sample.append(doc.text)
    if documents == 0:
        raise InputError(f"no readable document in {', '.join(cfg.paths)} ({len(files)} files, all empty or skipped): check the files")
    if documents < MIN_DOCUMENTS:
        raise InputError(f"{', '.join(cfg.paths)} holds {documents} documents: tune needs at least {MIN_DOCUMENTS}, because it holds "
                         "out whole documents for calibration and evaluation; add documents or split large files into sections")
    if not (held["validation"] and held["test"]):
        raise InputError(f"the {documents} documents leave no document for {'validation' if not held['validation'] else 'test'} "
                         f"(tune holds out whole documents, {SPLIT_RATIO[1]:.0%} each for calibration and evaluation): add documents, "
                         "or try another --seed")
    return Corpus(documents, characters, chunks, " ".join(sample), content.hexdigest()[:16])


def _field_names(cfg: TuneConfig) -> dict[str, str]:
    return {k: cfg.index[k] for k in ("id_field", "title_field", "text_field") if k in cfg.index}


@dataclass(frozen=True)
class Probe:
    """What the probe measured on this machine: seconds per embedded chunk, per training example, per answer
    and per written question read back, the probe's own seconds, and where training runs."""

    embed_chunk_s: float
    train_example_s: float
    answer_s: float
    read_back_s: float
    probe_s: float
    device: str
    bf16: bool


def probe(cfg: TuneConfig, corpus: Corpus) -> Probe:
    """Seconds per embedded chunk, per training example (forward and backward, as train-generator
    runs them), per answered question and per question read back, measured on this machine with the
    real models and prompts cut from the documents."""
    import torch

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    index_cfg = stage_config(IndexConfig, cfg.index, paths=cfg.paths, index="-", device=cfg.device)
    embedder = load_embedder(index_cfg.embedder, index_cfg.device, index_cfg.trust_remote_code)
    texts = [corpus.sample[i:i + CHARS_PER_CHUNK] or "text" for i in range(0, 32 * CHARS_PER_CHUNK, CHARS_PER_CHUNK)]
    embedder.encode(texts[:4])
    t = time.perf_counter()
    embedder.encode(texts)
    embed_chunk = (time.perf_counter() - t) / len(texts)
    del embedder
    train_cfg = stage_config(TrainConfig, train_settings(cfg), base_model=cfg.base_model, init_adapter=reference_of(cfg), device=cfg.device)
    model, tokenizer, kind, _ = setup_model(train_cfg, device)
    bf16 = bf16_supported(device) if train_cfg.bf16 == "auto" else train_cfg.bf16 == "true"
    model.train()

    sample_ids = tokenizer(corpus.sample, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]

    def prompt(tokens: int) -> str:
        return tokenizer.decode((sample_ids * (1 + tokens // len(sample_ids)))[:tokens])

    # passages as long as the documents' (a document shorter than a chunk is one chunk); training shows
    # the oracle and its distractors, answering k passages, the round trip one
    per_char = len(sample_ids) / max(1, len(corpus.sample))
    passage = int(per_char * min(CHUNK_CHARS, corpus.characters / corpus.documents))
    train_docs = 1 + coerce("num_distractors", cfg.raft.get("num_distractors", 3), int, "under 'raft:' in the tune recipe")
    examples = [encode_example(tokenizer, kind, prompt(train_docs * passage + PROMPT_FRAME_TOKENS), " answer [1]",
                               train_cfg.max_length)] * train_cfg.batch_size
    times = []
    for _ in range(2):  # the first pass warms up allocators and kernels
        t = time.perf_counter()
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id, kind).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, n = batch_loss(model, batch, kind)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    train_example = times[-1] / len(examples)
    del model
    model, tokenizer, kind = load_generator(cfg.base_model, reference_of(cfg) or None, cfg.device,
                                            inference_dtype("auto", device))
    answer = {}
    k = coerce("k", cfg.evaluate.get("k", 2), int, "under 'evaluate:' in the tune recipe")
    for name, tokens in (("answer", k * passage + PROMPT_FRAME_TOKENS), ("read_back", passage + PROMPT_FRAME_TOKENS)):
        texts = [prompt(tokens)] * 8
        t = time.perf_counter()
        generate_answers(model, tokenizer, kind, texts, max_new_tokens=24, batch_size=8)
        answer[name] = (time.perf_counter() - t) / len(texts)

    def sig(x: float) -> float:  # three significant digits, never rounded to 0
        return float(f"{x:.3g}")

    return Probe(embed_chunk_s=sig(embed_chunk), train_example_s=sig(train_example), answer_s=sig(answer["answer"]),
                 read_back_s=sig(answer["read_back"]), probe_s=sig(time.perf_counter() - t0), device=str(device), bf16=bf16)


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How the budget is spent; stored in tune.json and reused by a rerun."""

    budget_s: float | None
    documents: int
    chunks: int
    questions: int
    steps: int
    eval_steps: int
    calibrate_questions: int
    evaluate_questions: int
    probe: Probe
    seconds: dict[str, float]  # estimated per stage
    examples_per_step: int = 8

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Plan:
        """The plan as tune.json stores it (:func:`dataclasses.asdict`)."""
        return cls(**{**obj, "probe": Probe(**obj["probe"])})

    def table(self) -> str:
        """The plan in words, one line per stage."""
        p = self
        what = {
            "index": f"{p.documents} documents, about {p.chunks} chunks",
            "dataset": f"write {p.questions} questions ({int(SPLIT_RATIO[0] * 100)}% of documents train, the rest held out)",
            "train": f"{p.steps} steps of {p.examples_per_step} examples from the reference adapter, checkpoint every {p.eval_steps}",
            "calibrate": f"abstention threshold on {p.calibrate_questions} held-out questions, yes/no lean",
            "evaluate": f"base, reference and tuned on {p.evaluate_questions} held-out questions (+ injected documents)",
            "export": "the tuned adapter for llama.cpp or transformers",
        }
        lines = [f"  {s:<10} {what[s]:<82} ~{p.seconds[s] / 60:5.1f} min" for s in STAGES if s in p.seconds]
        total = sum(p.seconds.values())
        budget = "no limit (full recipe)" if p.budget_s is None else f"budget {p.budget_s / 60:.0f} min"
        probe = p.probe
        head = (f"plan ({budget}; probe on {probe.device}: {probe.train_example_s:.2f} s per training example, "
                f"{probe.answer_s:.2f} s per answer, {probe.embed_chunk_s * 1000:.0f} ms per chunk embedded)")
        return "\n".join([head, *lines, f"  {'total':<10} {'':<82} ~{total / 60:5.1f} min"])


def make_plan(cfg: TuneConfig, corpus: Corpus, probed: Probe, with_qa: bool) -> Plan:
    """Spread the budget: fixed costs (the index, each stage's model loading, training's evaluations)
    and the smallest held-out sets first; of the rest, three quarters write questions and train on
    them together (each written question costs its round trip and its share of ``epochs`` passes),
    one quarter answers more held-out questions.

    Raises:
        ConfigError: the budget is too small for one training step and the smallest held-out sets
            (the message gives the minimum for these documents on this machine).
    """
    budget = parse_budget(cfg.budget)
    a, r, x = probed.answer_s, probed.read_back_s, probed.train_example_s
    train = train_settings(cfg)
    per_step = int(train["batch_size"]) * int(train["grad_accum"])  # examples per optimizer step
    val_examples = int(train["eval_subset"]) * x / 3 + int(train["eval_generate"]) * a  # one evaluation: losses, then answers
    index_s = corpus.chunks * probed.embed_chunk_s + STAGE_LOAD_S
    answers = 3 * 2 * (2 if with_qa else 1)  # base, reference and tuned; retrieved and injected contexts; your QA too
    per_question = {"write": 2.0 * r,  # about half the written questions survive the round trip
                    "train": SPLIT_RATIO[0] * cfg.epochs * x}  # a written question's share of training
    max_questions = cfg.questions or 3 * corpus.chunks

    def estimate(questions: int, steps: int, cal: int, ev: int) -> dict[str, float]:
        evals = 1 + math.ceil(steps / eval_every(steps)) if steps else 0
        return {"index": index_s, "dataset": questions * per_question["write"] + STAGE_LOAD_S,
                "train": steps * per_step * x + evals * val_examples + STAGE_LOAD_S,
                "calibrate": (cal + YES_NO_QUESTIONS / 4) * a + STAGE_LOAD_S, "evaluate": ev * answers * a + 3 * STAGE_LOAD_S,
                **({"export": EXPORT_S} if cfg.export else {})}

    def steps_for(questions: int) -> int:
        return max(1, int(questions * per_question["train"] / x / per_step))

    if budget is None:  # the full recipe
        questions = max_questions
        held = max(MIN_HELD_OUT, int(questions * SPLIT_RATIO[1]))
        steps = steps_for(questions)
        return Plan(None, corpus.documents, corpus.chunks, questions, steps, eval_every(steps), held, held, probed,
                    estimate(questions, steps, held, held), per_step)
    min_questions = math.ceil(per_step / (SPLIT_RATIO[0] * cfg.epochs))  # one step's examples
    fixed = sum(estimate(min_questions, 1, MIN_HELD_OUT, MIN_HELD_OUT).values()) + probed.probe_s
    if SAFETY * budget < fixed:
        raise ConfigError(f"budget {cfg.budget} is too small on this machine: the documents' index, one training step and "
                          f"{MIN_HELD_OUT} held-out questions need at least {math.ceil(fixed / SAFETY / 60)} minutes; "
                          "pass a larger --budget")
    free = SAFETY * budget - fixed
    questions = min(max_questions, min_questions + int(0.75 * free / (per_question["write"] + per_question["train"])))
    # training's evaluations grow with the steps (three of them at most): keep them inside the budget
    while questions > min_questions and sum(estimate(questions, steps_for(questions), MIN_HELD_OUT, MIN_HELD_OUT).values()) \
            + probed.probe_s > SAFETY * budget - 0.25 * free:
        questions -= 1
    steps = steps_for(questions)
    if questions == max_questions:  # the documents give no more questions: spend the time on more passes, up to MAX_EPOCHS
        room = int((0.75 * free - questions * per_question["write"]) / (x * per_step))
        steps = max(steps, min(room, int(questions * SPLIT_RATIO[0] * MAX_EPOCHS / per_step)))
    left = SAFETY * budget - probed.probe_s - sum(estimate(questions, steps, MIN_HELD_OUT, MIN_HELD_OUT).values())
    cal = MIN_HELD_OUT + max(0, min(int(questions * SPLIT_RATIO[1]) - MIN_HELD_OUT, int(0.3 * left / a)))
    ev = MIN_HELD_OUT + max(0, min(int(questions * SPLIT_RATIO[2]) - MIN_HELD_OUT, int(0.7 * left / (answers * a))))
    return Plan(budget, corpus.documents, corpus.chunks, questions, steps, eval_every(steps), cal, ev, probed,
                estimate(questions, steps, cal, ev), per_step)


def eval_every(steps: int) -> int:
    """Evaluate and checkpoint about three times in a run (a kill -9 loses at most a third)."""
    return max(1, math.ceil(steps / 3))


# ---------------------------------------------------------------------------------------------
# The stages' configs: tune sets the paths between them; the YAML's per-stage mappings the rest
# ---------------------------------------------------------------------------------------------


def stage_config(cls: type, extra: dict[str, Any], **set_by_tune: Any) -> Any:
    """``cls`` built from the recipe's mapping for it (``extra``) and what tune sets; a key that tune
    sets itself is refused, as is a key the stage does not know."""
    clash = sorted(set(extra) & {k for k in set_by_tune if k not in ("device", "seed")})
    if clash:
        raise ConfigError(f"{cls.__name__} setting(s) {', '.join(clash)} in the tune recipe are set by tune itself "
                          "(paths between stages, the plan's sizes): remove them")
    defaults = {k: v for k, v in set_by_tune.items() if k in ("device", "seed")}
    return build_config(cls, overrides={**defaults, **extra, **{k: v for k, v in set_by_tune.items() if k not in defaults}})


# train-generator's settings under tune, where they differ from the command's defaults (the recipe's `train:` overrides):
# a smaller validation (its losses and answers are training time), the best checkpoint by validation loss
TRAIN_DEFAULTS = {"batch_size": 4, "grad_accum": 2, "eval_subset": 32, "eval_generate": 8, "max_new_tokens": 24,
                  "metric_for_best": "val_loss", "warmup_ratio": 0.05}


# build-raft-dataset's settings under tune (the recipe's `raft:` overrides): with 25% unanswerable questions and
# RAFT's P = 0.8 (its no-oracle examples target the abstention too) 40% of the targets were abstentions, and the
# adapter refused 24% of other-domain human questions it could answer; 15% and P = 0.9 make it 23.5%
RAFT_DEFAULTS = {"p_oracle": 0.9}


def train_settings(cfg: TuneConfig) -> dict[str, Any]:
    """The training settings tune gives train-generator besides the paths and the plan's sizes."""
    return {**TRAIN_DEFAULTS, **cfg.train}


def reference_of(cfg: TuneConfig) -> str:
    """The reference adapter directory, '' when there is none (training then starts a fresh LoRA)."""
    return cfg.reference if cfg.reference and Path(cfg.reference).is_dir() else ""


def configs(cfg: TuneConfig, plan: Plan) -> dict[str, Any]:
    """Every stage's config, as the command alone would get it."""
    out, ref = Path(cfg.output), reference_of(cfg)
    held = out / "heldout"
    raft_set = {"index": str(out / "index"), "qa": [cfg.qa] if cfg.qa else [], "output": str(out / "dataset"), "generator": cfg.base_model,
            "generate_questions": plan.questions, "question_yes_no": cfg.yes_no, "question_unanswerable": cfg.unanswerable,
            "split_ratio": SPLIT_RATIO, "seed": cfg.seed, "device": "cpu" if cfg.device == "cpu" else "auto"}
    if ref and "question_reader" not in cfg.raft and "question_generator" not in cfg.raft:
        raft_set["question_reader"] = f"adapter:{ref}"
    train = {"dataset": str(out / "dataset"), "output": str(out / "adapter"), "base_model": cfg.base_model, "init_adapter": ref,
             "max_steps": plan.steps, "eval_steps": plan.eval_steps, "seed": cfg.seed, "device": cfg.device,
             "learning_rate": cfg.learning_rate}
    adapters = [a for a in (ref, str(out / "adapter")) if a]
    evaluate_set = {"index": str(out / "index"), "qa": str(held / "test.jsonl"), "adapter": adapters, "no_adapter": True, "injection": True,
                "limit": plan.evaluate_questions, "output": str(out / "evaluation"), "seed": cfg.seed, "device": cfg.device,
                "base_model": cfg.base_model}
    return {
        "index": stage_config(IndexConfig, cfg.index, paths=cfg.paths, index=str(out / "index"), device="cpu" if cfg.device == "cpu" else "auto"),
        "dataset": stage_config(RaftConfig, {**RAFT_DEFAULTS, **cfg.raft}, **raft_set),
        "train": stage_config(TrainConfig, train_settings(cfg), **train),
        "calibrate": stage_config(CalibrateConfig, cfg.calibrate, adapter=str(out / "adapter"), index=str(out / "index"),
                                  qa=str(held / "validation.jsonl"), limit=plan.calibrate_questions, seed=cfg.seed, device=cfg.device,
                                  base_model=cfg.base_model),
        "evaluate": stage_config(EvaluateConfig, cfg.evaluate, **evaluate_set),
        "evaluate_qa": stage_config(EvaluateConfig, cfg.evaluate, **{**evaluate_set, "qa": str(held / "qa-test.jsonl"),
                                                                       "output": str(out / "evaluation-qa")}) if cfg.qa else None,
        "export": stage_config(ExportConfig, cfg.export_settings, adapter=str(out / "adapter"), format=cfg.export,
                               output=str(out / "export")) if cfg.export else None,
    }


# ---------------------------------------------------------------------------------------------
# Keys: what a stage's result depends on
# ---------------------------------------------------------------------------------------------


def file_hash(path: Path) -> str:
    """sha256 of a file (first 16 hex digits); '' when it is missing."""
    if not path.is_file():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def weights_key(folder: Path) -> str:
    """The adapter's weight files (a LoRA adapter's, or a full fine-tune's)."""
    weights = sorted(folder.glob("adapter_model.*")) + sorted(folder.glob("model*.safetensors"))
    return "+".join(file_hash(p) for p in weights)


def adapter_key(folder: Path) -> str:
    """The adapter's weights and its rag_pipeline.json (with its calibration)."""
    return weights_key(folder) + "+" + file_hash(folder / META_FILE)


def _settings(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in ("progress", "resume", "json", *drop)}


def stage_key(stage: str, cfg: TuneConfig, cfgs: dict[str, Any], corpus: Corpus) -> str:
    """A key of the stage's settings and of the upstream artifacts it reads (their own fingerprints)."""
    out = Path(cfg.output)
    if stage == "index":
        parts: Any = [corpus.key, _settings(cfgs["index"])]
    elif stage == "dataset":
        parts = [file_hash(out / "index" / "manifest.json"), _settings(cfgs["dataset"]), file_hash(Path(cfg.qa)) if cfg.qa else "",
                 adapter_key(Path(reference_of(cfg))) if reference_of(cfg) else ""]
    elif stage == "train":
        parts = [_read_json(out / "dataset" / "manifest.json").get("fingerprint"), _settings(cfgs["train"]),
                 adapter_key(Path(reference_of(cfg))) if reference_of(cfg) else ""]
    elif stage == "calibrate":
        meta = _read_json(out / "adapter" / META_FILE)
        parts = [weights_key(out / "adapter"), meta.get("metrics"),
                 file_hash(out / "heldout" / "validation.jsonl"), _settings(cfgs["calibrate"])]
    elif stage == "evaluate":
        parts = [adapter_key(out / "adapter"), file_hash(out / "heldout" / "test.jsonl"), file_hash(out / "heldout" / "qa-test.jsonl"),
                 _settings(cfgs["evaluate"]), adapter_key(Path(reference_of(cfg))) if reference_of(cfg) else ""]
    else:
        parts = [adapter_key(out / "adapter"), _settings(cfgs["export"]) if cfgs["export"] else None]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def present(stage: str, out: Path, mode: str = "free") -> bool:
    """Whether the stage's artifact is there (a key alone does not prove it: the folder may be gone);
    ``mode``: the decoding calibrated (:data:`rag_pipeline.answer.abstention.MODES`)."""
    return {
        "index": lambda: (out / "index" / "manifest.json").is_file(),
        "dataset": lambda: (out / "dataset" / "manifest.json").is_file() and (out / "heldout" / "test.jsonl").is_file(),
        "train": lambda: (out / "adapter" / META_FILE).is_file(),
        "calibrate": lambda: mode in (_read_json(out / "adapter" / META_FILE).get("abstention") or {}),
        "evaluate": lambda: (out / "evaluation" / "metrics.json").is_file(),
        "export": lambda: (out / "export").is_dir(),
    }[stage]()


# ---------------------------------------------------------------------------------------------
# Running the stages
# ---------------------------------------------------------------------------------------------


def check_output(out: Path) -> dict[str, Any]:
    """The tune manifest of an earlier run in ``out`` ({} for a new or empty folder).

    Raises:
        ConfigError: ``out`` is a file, or a folder of someone else's files.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file: pass a folder for tune's results")
    if not out.is_dir() or not any(out.iterdir()):
        return {}
    manifest = _read_json(out / MANIFEST)
    if manifest.get("kind") != KIND:
        raise ConfigError(f"--output {out} holds files that tune did not write (no {MANIFEST}): pass a new or empty folder")
    return manifest


def write_heldout(cfg: TuneConfig, cfgs: dict[str, Any]) -> dict[str, int]:
    """The dataset's validation and test questions as QA files in OUTPUT/heldout: generated test
    questions in test.jsonl, your own in qa-test.jsonl, both kinds in validation.jsonl (calibration)."""
    out = Path(cfg.output)
    eval_dir = out / "dataset" / "exports" / "eval"
    if not (eval_dir / "test.jsonl").is_file():
        raise InputError(f"{eval_dir} has no test.jsonl: tune's dataset needs the eval export (keep 'eval' in raft: format)")
    rows = {s: [json.loads(line) for line in (eval_dir / f"{s}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
            for s in ("validation", "test")}
    yours = {it.question.strip() for it in load_qa(cfg.qa, cfgs["dataset"].qa_fields())} if cfg.qa else set()
    files = {"validation.jsonl": rows["validation"], "test.jsonl": [r for r in rows["test"] if r["question"].strip() not in yours]}
    if cfg.qa:
        files["qa-test.jsonl"] = [r for r in rows["test"] if r["question"].strip() in yours]
    for name, items in files.items():  # every file is checked before any is written: no half-new heldout/
        if not items:
            raise InputError(f"no {name.removesuffix('.jsonl')} question was held out (the documents gave "
                             f"{sum(map(len, rows.values()))} held-out questions): tune needs more documents or a larger --budget")
    held = out / "heldout"
    held.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        with atomic_file(held / name) as f:
            f.writelines(json_line(r) for r in items)
    return {name: len(items) for name, items in files.items()}


def run_stage(stage: str, cfg: TuneConfig, cfgs: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Run one stage through its command's library function; returns a short summary. ``resume``:
    training's checkpoints in OUTPUT/adapter were written with the same settings."""

    out = Path(cfg.output)
    if stage == "index":
        m = build_index(cfgs["index"])
        return {"chunks": m["corpus"]["chunks"], "up_to_date": bool(m.get("up_to_date"))}
    if stage == "dataset":
        m = raft.run(cfgs["dataset"])
        return {"examples": {s: m["counts"].get(f"examples_{s}") for s in ("train", "validation", "test")},
                "generated": (m.get("generated_questions") or {}).get("kept"), "heldout": write_heldout(cfg, cfgs)}
    if stage == "train":
        return train_adapter(out / "adapter", cfgs["train"], resume)
    if stage == "calibrate":
        pipe = Pipeline.load(cfgs["calibrate"])  # one load for the threshold and the yes/no lean
        c = calibrate.run(cfgs["calibrate"], pipe)
        return {**{k: c.get(k) for k in ("threshold", "overall_f1", "false_abstain_rate", "questions", "roc_auc")},
                "yes_no_bias": yes_no_lean(cfgs["calibrate"], pipe)}
    if stage == "evaluate":
        m = evaluate.run(cfgs["evaluate"])
        if cfgs["evaluate_qa"] is not None:
            evaluate.run(cfgs["evaluate_qa"])
        return {"evaluated": m["qa"]["evaluated"]}
    r = export_run(cfgs["export"])
    return {"output": r.get("output") or str(out / "export")}


def train_adapter(adapter: Path, cfg: TrainConfig, resume: bool) -> dict[str, Any]:
    """The train stage: resume checkpoints of these very settings, else train afresh with the earlier adapter moved
    aside (``.adapter.old-PID-X``) until the new run's first checkpoint: a run that fails before it puts the earlier
    one back, and so does the next start after a run killed before it."""
    last = adapter / "checkpoints" / "last"
    for stale in aside_of_dead(adapter):  # left by a killed run: resumable work wins, else the earlier adapter returns
        if (last / "state.json").is_file():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            _put_back(stale, adapter)
    differs = train_stage.checkpoint_differs(last, cfg) if resume and (last / "state.json").is_file() else None
    if differs:
        print(f"train: the checkpoint in {last} has other settings ({', '.join(differs)}): training afresh", file=sys.stderr)
    resume = differs == []
    old = None
    if not resume and adapter.exists() and (train_stage.ARTIFACT.marked(adapter) or
                                            {p.name for p in adapter.iterdir()} <= train_stage.ARTIFACT.scratch):
        old = aside_name(adapter)  # train-generator's output (of other inputs or settings), or its scratch
        os.rename(adapter, old)
    if resume:
        print(f"train: resuming from {last}", file=sys.stderr)
    try:
        s = train_stage.run(TrainConfig(**{**to_dict(cfg), "resume": resume}))
    except BaseException:
        if old is not None and not (last / "state.json").is_file():
            _put_back(old, adapter)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the new run checkpointed (interrupted) or finished: it is the one to keep
    if s.get("status") == "interrupted":
        raise KeyboardInterrupt
    return {k: s.get(k) for k in ("status", "steps", "best_step", "train_examples_per_s", "tuned")}


def _put_back(aside: Path, adapter: Path) -> None:
    """``aside`` renamed back to ``adapter``, over the scratch a failed run left there (checkpoints, TensorBoard logs);
    never over a finished adapter or anything else."""
    if adapter.exists():
        if not {p.name for p in adapter.iterdir()} <= train_stage.ARTIFACT.scratch:
            return
        shutil.rmtree(adapter)
    os.rename(aside, adapter)


def yes_no_lean(cfg: CalibrateConfig, pipe: Any = None) -> float | None:
    """``calibrate --task yes-no`` after a short answer's free-decoding threshold: the tuned adapter's lean between
    yes and no (:mod:`rag_pipeline.answer.polar`), on :data:`YES_NO_QUESTIONS` written from the validation
    documents, with ``pipe`` (the adapter the threshold was chosen with) when given. None, with a warning, where
    those documents yield no yes/no questions of both answers (or the tokenizer lacks a yes or a no token): yes/no
    answers then open with the model's own word."""
    if cfg.task != "qa" or cfg.grounded:
        return None
    try:
        return calibrate.run(dataclasses.replace(cfg, task="yes-no", limit=YES_NO_QUESTIONS), pipe)["bias"]
    except (ConfigError, InputError) as e:
        log.warning("calibrate: no yes/no lean measured (%s); yes/no answers open with the model's own word", e)
        return None


def reset_peak_rss() -> None:
    """Start a new peak-memory count (Linux: /proc/self/clear_refs 5 resets VmHWM to the resident set
    now), after handing the last stage's freed memory back to the system."""
    gc.collect()
    train_stage.release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The peak resident set since :func:`reset_peak_rss` (VmHWM), else since the process began."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(cfg: TuneConfig, echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Plan (or reuse the stored plan), then run every stage that is out of date.

    Returns:
        The tune manifest (tune.json): config, plan, and per stage its key, seconds, peak memory and summary.

    Raises:
        InputError, ConfigError: bad documents, output, budget or recipe, before any model is loaded;
            a stage's own errors as its command gives them.
    """
    t_all = time.perf_counter()
    out = Path(cfg.output)
    check_separate([*cfg.paths, *([cfg.qa] if cfg.qa else []), *([cfg.reference] if cfg.reference else [])], out)
    old = check_output(out)
    budget = parse_budget(cfg.budget)
    if budget is not None and budget < MIN_BUDGET_S:
        raise ConfigError(f"budget {cfg.budget} is too small: tune needs at least {MIN_BUDGET_S // 60:.0f} minutes (an index, a probe, "
                          "one training step, held-out questions answered by three systems); pass a larger --budget")
    corpus = scan_documents(cfg)
    if cfg.qa and not Path(cfg.qa).exists():
        raise InputError(f"--qa {cfg.qa} does not exist: pass your QA file, or drop --qa to tune on written questions only")
    if cfg.reference and not reference_of(cfg):
        raise InputError(f"reference adapter {cfg.reference} does not exist: run tune from the repository's root (it holds "
                         "adapters/smollm2-disfl-qa), pass --reference DIR, or --reference '' to start from a fresh LoRA")
    planned = [corpus.key, cfg.budget, cfg.questions, cfg.epochs, cfg.device, bool(cfg.qa), cfg.base_model, cfg.train, cfg.index,
               cfg.yes_no, cfg.unanswerable]
    # what else the probe reads, only where it differs from the default: earlier outputs keep their plans
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TuneConfig)}
    probed = {k: getattr(cfg, k) for k in ("raft", "evaluate", "reference") if getattr(cfg, k) != defaults[k]}
    plan_key = hashlib.sha256(json.dumps(planned + ([probed] if probed else []), sort_keys=True).encode()).hexdigest()[:16]
    with output_lock(out):
        if old.get("plan_key") == plan_key and old.get("plan"):
            plan = Plan.from_json(old["plan"])
            echo("plan (stored in tune.json; same documents and budget):")
        else:
            echo(f"probing this machine ({corpus.documents} documents) ...")
            plan = make_plan(cfg, corpus, probe(cfg, corpus), bool(cfg.qa))
        echo(plan.table())
        manifest: dict[str, Any] = {"kind": KIND, "schema_version": SCHEMA_VERSION, "config": to_dict(cfg), "plan_key": plan_key,
                                    "plan": asdict(plan), "stages": dict(old.get("stages") or {}), "started": dict(old.get("started") or {})}
        if cfg.dry_run:
            return manifest
        out.mkdir(parents=True, exist_ok=True)
        cfgs = configs(cfg, plan)
        stages = [s for s in STAGES if s != "export" or cfg.export]
        forced = STAGES.index(cfg.from_stage) if cfg.from_stage else len(STAGES)
        write_json(out / MANIFEST, manifest)  # from here on the folder is tune's, even if killed in the first stage
        for i, stage in enumerate(stages, 1):
            key = stage_key(stage, cfg, cfgs, corpus)
            done = manifest["stages"].get(stage) or {}
            if STAGES.index(stage) < forced and done.get("key") == key and present(stage, out, mode_of(cfg.calibrate.get("task", "qa"), bool(cfg.calibrate.get("grounded")))):
                echo(f"[{i}/{len(stages)}] {stage}: up to date (same inputs and settings), skipped")
                continue
            echo(f"[{i}/{len(stages)}] {stage}: ~{plan.seconds.get(stage, 0) / 60:.1f} min planned")
            if stage == "index" and STAGES.index(stage) >= forced:
                cfgs["index"].force = True
            # checkpoints in OUTPUT/adapter are resumed when they are of these settings and the stage is not forced
            resume = stage == "train" and manifest["started"].get("train") == key and STAGES.index(stage) < forced
            if stage == "train":
                manifest["started"]["train"] = key
            # on disk before the stage replaces its artifact: a run that fails or is killed midway leaves no key
            # that would let a later run skip the stage over a half-replaced artifact
            manifest["stages"].pop(stage, None)
            write_json(out / MANIFEST, manifest)
            reset_peak_rss()
            t0 = time.perf_counter()
            summary = run_stage(stage, cfg, cfgs, resume)
            manifest["stages"][stage] = {"key": key,
                                         "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": peak_rss_mb(),
                                         "summary": summary, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            manifest["started"].pop(stage, None)
            write_json(out / MANIFEST, manifest)
        manifest["seconds"] = round(time.perf_counter() - t_all, 1)
        write_json(out / MANIFEST, manifest)
        with atomic_file(out / REPORT) as f:
            f.write(render_report(cfg, manifest))
    return manifest


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

REPORT = "report.md"
# (header, path in an evaluate result); all percentages
FIGURES = [("F1", ("answer", "f1")), ("overall F1", ("squad2", "overall_f1")), ("false abstain", ("abstention", "false_abstain_rate")),
           ("unsupported", ("grounding", "unsupported_rate")), ("yes/no acc.", ("yes_no", "accuracy")),
           ("cite prec.", ("citations", "precision")), ("hijacked", ("injection", "hijack_rate"))]


def comparison(metrics: dict[str, Any], tuned: str) -> list[list[str]]:
    """One row per system (base, reference, tuned): the retrieved context's figures and the injected one's hijack rate."""

    rows = []
    for system in metrics["systems"]:
        name = system["name"]
        label = "tuned" if system["adapter"] == tuned else "base" if system["adapter"] is None else f"reference ({name})"
        res = metrics["results"][name]
        cells = []
        for header, (a, b) in FIGURES:
            ctx = "injected" if header == "hijacked" else "retrieved"
            cells.append(fmt(((res.get(ctx) or {}).get(a) or {}).get(b)))
        rows.append([label, str(res["retrieved"]["counts"]["questions"]), *cells])
    return rows


def render_report(cfg: TuneConfig, manifest: dict[str, Any]) -> str:
    """``OUTPUT/report.md``: the comparison on held-out documents, the stages' times and memory, the plan."""

    out = Path(cfg.output)
    tuned = str(out / "adapter")
    plan = Plan.from_json(manifest["plan"])
    lines = ["# tune report", "",
             f"Documents {', '.join(cfg.paths)} ({plan.documents}); budget {cfg.budget}; {plan.questions} questions written, "
             f"{plan.steps} training steps. Held-out questions come from documents the adapter never trained on.", ""]
    for title, folder in (("Held-out written questions", "evaluation"), ("Your own questions (held-out part)", "evaluation-qa")):
        metrics = _read_json(out / folder / "metrics.json")
        if metrics:
            lines += [f"## {title}", "", f"`{folder}/report.md` has every figure; `{folder}/chart.png` the chart. Percentages.", "",
                      _table(["system", "n", *(h for h, _ in FIGURES)], comparison(metrics, tuned), 1), ""]
    note = verdict(out, tuned)
    if note:
        lines += ["## Which adapter", "", note, ""]
    stages = manifest["stages"]
    lines += ["## Stages", "", _table(["stage", "planned min", "wall min", "peak memory MiB"],
                                      [[s, f"{plan.seconds.get(s, 0) / 60:.1f}", f"{stages[s]['seconds'] / 60:.1f}", f"{stages[s]['peak_rss_mb']:.0f}"]
                                       for s in STAGES if s in stages], 1), "",
              "## Use it", "", "```", *use_commands(cfg), "```", ""]
    return "\n".join(lines)


def verdict(out: Path, tuned: str) -> str | None:
    """A note when the reference adapter answered the held-out questions better than the tuned one
    (overall F1 on your own questions when given, else on the written ones); None otherwise."""
    for folder, what in (("evaluation-qa", "your own held-out questions"), ("evaluation", "the held-out written questions")):
        metrics = _read_json(out / folder / "metrics.json")
        if not metrics:
            continue
        scores = {}
        for system in metrics["systems"]:
            res = metrics["results"][system["name"]]["retrieved"]
            key = "tuned" if system["adapter"] == tuned else None if system["adapter"] is None else "reference"
            if key:
                scores[key] = ((res.get("squad2") or {}).get("overall_f1"), res["counts"]["questions"], system["adapter"])
        if {"tuned", "reference"} <= set(scores) and None not in (scores["tuned"][0], scores["reference"][0]) \
                and scores["reference"][0] > scores["tuned"][0]:
            (ref, n, path), tun = scores["reference"], scores["tuned"][0]
            return (f"On {what} the reference adapter scored higher than the tuned one: overall F1 {100 * ref:.1f} against "
                    f"{100 * tun:.1f} ({n} questions). Compare them on more of your questions (`rag-pipeline evaluate --adapter "
                    f"{path} --adapter {tuned} ...`) before you choose; to answer with the reference adapter, pass "
                    f"`--adapter {path}` to the commands below.")
        return None
    return None


def use_commands(cfg: TuneConfig) -> list[str]:
    """The commands that use the result."""
    adapter, index = (shlex.quote(str(Path(cfg.output) / name)) for name in ("adapter", "index"))
    return [f'rag-pipeline ask --adapter {adapter} --index {index} "your question"',
            f"rag-pipeline serve --adapter {adapter} --index {index}"]


def main(cfg: TuneConfig) -> int:
    """CLI entry: plan, run the stages that are out of date, print the comparison and the commands to use the result."""
    try:
        manifest = run(cfg)
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume (training continues from its last checkpoint in "
              f"{Path(cfg.output) / 'adapter' / 'checkpoints'})", file=sys.stderr)
        return 130
    if cfg.dry_run:
        return 0
    print(render_report(cfg, manifest))
    budget = parse_budget(cfg.budget)
    spent = manifest["seconds"]
    print(f"tune took {spent / 60:.1f} min" + (f" of a {budget / 60:.0f}-minute budget" if budget else "")
          + f"; report: {Path(cfg.output) / REPORT}")
    return 0
