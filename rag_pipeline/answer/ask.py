"""``ask``: answer questions from an index with the (RAFT-tuned) generator, citing sources.

Setup -> run -> print. :class:`Pipeline` loads the retriever, the base generator and its
adapter once; :meth:`Pipeline.answer_batch` retrieves top-k chunks (or chooses k passages from
more candidates: ``--passages``), abstains without calling the generator when the best retrieval
score is below ``min_score``, fits the documents into the prompt's token budget, renders the
adapter's own prompt template (read from its ``rag_pipeline.json``, never re-created here),
generates in batches and parses ``[n]`` citations back to the retrieved chunks. ``evaluate``
calls the same core.

Three ways in (:func:`main`): one question argument; no argument, questions read line by line
from standard input (each answered as it arrives); ``--questions QA.jsonl`` answered in
batches to ``--output`` (one JSON line per answer, written atomically). :func:`run` is the
library entry: the answers to ``--question`` or ``--questions``, nothing printed or written.

torch and transformers are imported inside functions, so ``ask --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from rag_pipeline import batching, generator, inference
from rag_pipeline.adapter_meta import read_adapter_meta
from rag_pipeline.answer import focus, polar, structured, summary
from rag_pipeline.answer import probe as answerability
from rag_pipeline.answer.abstention import (abstention_of, applied, check_orders, stored_yes_no_bias, surer_order,
                                             unmeasured_yes_no, withhold)
from rag_pipeline.answer.check import cited_problem, misread
from rag_pipeline.answer.grounded import GroundedConstraint, GroundedSummaryConstraint
from rag_pipeline.answer.settings import DEFAULT_ADAPTER, AnswerSettings, Task
from rag_pipeline.atomic import atomic_file, check_file_target, check_separate, json_line
from rag_pipeline.config import opt
from rag_pipeline.data import tasks
from rag_pipeline.device import inference_dtype, resolve_device
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.index.format import read_manifest
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.metrics import is_abstention, may_become_abstention
from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
from rag_pipeline.passage import Passage, from_given
from rag_pipeline.prompt import (ABSTAIN, BudgetError, adapter_template, fit_documents, model_text_fn, render_user, sentence_spans,
                                  shown_question)
from rag_pipeline.qa import QAFieldConfig, QAFields, QAItem, load_qa
from rag_pipeline.support import word_share
from rag_pipeline.textnorm import contains_answer

log = logging.getLogger(__name__)

BATCHES_PER_CALL = 4  # --questions: generation batches per answer_batch call; length-sorting packs them tighter


@dataclass
class AskConfig(AnswerSettings, QAFieldConfig):
    """Settings of ``ask``: the answering settings (:class:`AnswerSettings`) and what to answer and print."""

    question: str = opt("", "the question; empty: read questions line by line from standard input")
    show_context: bool = opt(False, "also print the documents shown to the generator")
    json: bool = opt(False, "print JSON: answer, citations, retrieved chunks with scores, timings per stage")
    questions: str = opt("", "QA file to answer in batches (JSONL, JSON, CSV/TSV, Parquet, datasets folder; see rag_pipeline.qa)")
    output: str = opt("", "with --questions: JSONL file for the answers (written atomically); empty: standard output "
                          "(readable text with each gold answer; JSON lines with --json)")
    limit: int = opt(0, "with --questions: answer only the first N questions of the file (0 = all)")
    progress: bool = opt(True, "progress bar in --questions mode")

    def __post_init__(self) -> None:
        if self.question and not self.question.strip():
            raise InputError("empty question: pass the question text, e.g. ask \"who founded X?\", or nothing to read questions from standard input")
        super().__post_init__()
        if self.question and self.questions:
            raise ConfigError("a question and --questions were both given: pass one question, or a QA file with --questions")
        if self.limit < 0 or (self.limit and not self.questions):
            raise ConfigError(f"limit is {self.limit}: give --questions FILE and a limit >= 0 (0 = every question)")
        if self.output and not self.questions:
            raise ConfigError("--output needs --questions FILE.jsonl (a single answer is printed; use --json for JSON)")


@dataclass
class Citation:
    """A source the answer cites: ``n`` is its number in the prompt (``[n]``)."""

    n: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    score: float | None
    snippet: str


@dataclass
class Answer:
    """One answered question."""

    question: str
    answer: str  # the generation (citations kept), or exactly prompt.ABSTAIN
    abstained: bool
    abstain_reason: str | None  # "threshold" (retrieval) | "generator" | "calibration" (null margin over the threshold)
    #                             | "probe" (the answerability probe, --abstain-probe: nothing generated)
    #                             | "no_content" | "unsupported" (the answer check, see ``rejected``) | None
    citations: list[Citation]
    retrieved: list[Passage]  # the documents shown (text as shown, "truncated" when cut), in prompt order
    timings: dict[str, float]  # seconds: retrieval, prompt, generation (batch stages split evenly)
    raw: str  # the generator's raw text ("" when it was not called); the withheld answer when abstain_reason is "calibration"
    margin: float | None = None  # null margin log P(abstain) - log P(answer), with a calibrated threshold (None otherwise);
    #                              --orders both: the mean of the two orders' margins, which the threshold judged (one
    #                              passage shown, or no margin in the other order: its own)
    rejected: str | None = None  # "no_content" | "unsupported": the answer check refused the generator's answer (in ``raw``);
    #                              "misread": it cited a passage less about the question than another shown (``reread``)
    fallback: str | None = None  # "grounded": the answer shown is the grounded re-decode of a rejected one; "reread": the
    #                              answer from the passages most about the question, of a misread one
    # A JSON answer (--task extract, response_format): ``answer`` is the JSON text, decoded under the schema.
    data: Any = None  # the parsed object (None: a sentence answer, or JSON that did not parse: ``json_error``)
    fields: dict[str, list[int]] | None = None  # leaf path ("name", "events[0]") -> numbers of the shown passages holding its value
    unsupported_fields: list[str] | None = None  # leaf paths whose value no shown passage holds
    json_error: str | None = None  # why the JSON answer does not parse or validate (it ran into the token limit)
    json_cut: bool = False  # the token limit closed the JSON answer early: valid, its last value cut short
    # A summary (--task summary): per sentence, its text, cited numbers, whether they support it, and which citations are precise.
    sentences: list[dict[str, Any]] | None = None
    summary_error: str | None = None  # the token limit cut the summary's last sentence (not in ``sentences``)
    probe: float | None = None  # the answerability probe's score of the prompt (--abstain-probe; "probe" holds it above the cutoff)

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON-ready data; a sentence answer has no JSON answer's fields."""
        d = dataclasses.asdict(self)
        if self.fields is None and self.json_error is None:
            for name in _JSON_FIELDS:
                del d[name]
        if self.sentences is None:
            del d["sentences"], d["summary_error"]
        return d


_JSON_FIELDS = ("data", "fields", "unsupported_fields", "json_error", "json_cut")  # a JSON answer's; a summary's: sentences


@dataclass(frozen=True)
class Decoding:
    """Generation settings of one ``answer_batch`` call (``serve``'s per-request settings); equal ones may share a batch."""

    max_new_tokens: int = 48
    do_sample: bool = False  # False: greedy (or beam search with num_beams > 1)
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    num_beams: int = 1
    task: Task = "qa"  # qa: a short cited answer; summary: cited sentences; extract: a JSON object (json_schema)
    json_schema: str | None = None  # task extract: the schema, canonical (structured.canonical)

    def __post_init__(self) -> None:
        if (self.task == "extract") != (self.json_schema is not None):
            raise ConfigError("a JSON answer (task extract) needs its schema, and only it has one")
        if self.task != "qa" and self.num_beams > 1:
            raise ConfigError(f"a {self.task} answer is decoded greedily or sampled, not with beam search: drop num_beams")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ConfigError(f"max_new_tokens ({self.max_new_tokens}) and num_beams ({self.num_beams}) must be at least 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature ({self.temperature}) must be positive and top_p ({self.top_p}) in (0, 1]")

    @classmethod
    def of(cls, cfg: AnswerSettings, schema: dict[str, Any] | None = None) -> Decoding:
        """The settings ``cfg`` gives (what ``answer_batch`` uses when the call gives none); ``schema``: ``cfg.schema`` loaded."""
        if schema is not None:
            return cls(cfg.max_json_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed, 1, "extract", structured.canonical(schema))
        if cfg.task == "summary":
            return cls(cfg.max_summary_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed, 1, "summary")
        return cls(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed, cfg.num_beams)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema a JSON answer follows (None: a cited sentence)."""
        return None if self.json_schema is None else json.loads(self.json_schema)


@dataclass
class TokenUsage:
    """Tokens one answer cost (``serve``'s ``usage``); all 0 when the retrieval threshold abstained before generating (a question
    the answerability probe held: its prompt's tokens, read once, and no completion)."""

    prompt_tokens: int = 0  # prompt tokens read, once per pass (a retried refusal reads the prompt again, the answerability probe once more)
    completion_tokens: int = 0  # tokens decoded, EOS included: withheld and retried decodes count too
    finish_reason: Literal["stop", "length"] = "stop"  # length: the answer given ran into max_new_tokens


class _LiveText:
    """One answer's text as it is decoded, handed on only where the final answer cannot differ.

    Held back: a tail that may still be a refusal (:func:`~rag_pipeline.metrics.may_become_abstention`:
    the final answer is then the exact abstention sentence), trailing whitespace (the answer is
    stripped) and an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.sent = ""
        self.free = False  # set once the text can no longer become an abstention

    def token(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return
        self.free = self.free or not may_become_abstention(text)
        safe = text.rstrip()
        if self.free and safe.startswith(self.sent) and len(safe) > len(self.sent):
            self.emit(safe[len(self.sent):])
            self.sent = safe


class Answerer(Protocol):
    """Something that answers a batch of questions: :class:`Pipeline`, or a test's scripted fake."""

    def answer_batch(self, questions: list[str], contexts: list[list[Passage]] | None = None) -> list[Answer]:
        ...


# --------------------------------------------------------------------------------- parsing

_CITE = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


def answer_schema(cfg: AnswerSettings, meta: Any, adapter: str | None) -> dict[str, Any] | None:
    """The JSON schema ``--task extract`` answers under: ``--schema``'s, else the adapter's own (the schema of its JSON
    training targets: its records' own objects', or the rule-written answer/quote targets'), else any JSON object; None
    for the other tasks."""
    if cfg.task != "extract":
        return None
    if cfg.schema:
        return structured.load_schema(cfg.schema)
    if meta is not None and meta.extract_schema:
        return structured.check_schema(meta.extract_schema, f"the extract_schema of adapter {adapter}")
    return structured.JSON_OBJECT


def parse_citations(text: str, n_docs: int) -> list[int]:
    """The document numbers cited as ``[n]`` (or ``[n, m]``), 1-based, in range, deduplicated, in order."""
    out: list[int] = []
    for m in _CITE.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if 1 <= n <= n_docs and n not in out:
                out.append(n)
    return out


def renumber(text: str, numbers: dict[int, int]) -> str:
    """``text`` with each citation ``[n]`` (or ``[n, m]``) numbered ``numbers[n]``; a number not in ``numbers`` cited no
    passage and is dropped (a citation left empty goes, with the space before it)."""
    def one(m: re.Match[str]) -> str:
        kept = [str(numbers[int(p)]) for p in re.split(r"[,;]", m.group(1)) if int(p) in numbers]
        return " [" + ", ".join(kept) + "]" if kept else ""

    return re.sub(r"\s*" + _CITE.pattern, one, text).strip()


def first_numbers(first: list[Passage], second: list[Passage]) -> dict[int, int]:
    """The numbers (1-based) that the passages of a second prompt, ``second``, had in the first prompt, ``first``,
    by chunk id: ``{number in second: number in first}``."""
    where = {d["id"]: n for n, d in enumerate(first, 1)}
    return {n: where[d["id"]] for n, d in enumerate(second, 1) if d["id"] in where}


def make_snippet(text: str, answer: str, width: int) -> str:
    """A short excerpt of a cited chunk: the sentence holding the answer when there is one, else its start."""
    flat = " ".join(text.split())
    plain = _CITE.sub("", answer).strip(" .")
    if plain:
        for s, e in sentence_spans(flat):
            if contains_answer(flat[s:e], [plain]):
                flat = flat[s:e]
                break
    return flat if len(flat) <= width else flat[:width].rsplit(" ", 1)[0] + " ..."


# -------------------------------------------------------------------------------- pipeline


def choose_adapter(cfg: AnswerSettings) -> tuple[str | None, str]:
    """(adapter directory or None, a line saying which generator is used and why)."""
    if cfg.no_adapter:
        return None, "base model without an adapter (--no-adapter)"
    if cfg.adapter:
        if not Path(cfg.adapter).is_dir():
            raise InputError(f"adapter directory {cfg.adapter} does not exist: pass a train-generator output directory, or --no-adapter for the base model")
        return cfg.adapter, f"adapter {cfg.adapter}"
    if Path(DEFAULT_ADAPTER).is_dir():
        return DEFAULT_ADAPTER, f"adapter {DEFAULT_ADAPTER} (the default)"
    if Path(REFERENCE_ADAPTER).is_dir():
        return REFERENCE_ADAPTER, f"reference adapter {REFERENCE_ADAPTER} ({DEFAULT_ADAPTER} does not exist)"
    return None, (f"base model without an adapter: neither {DEFAULT_ADAPTER} nor {REFERENCE_ADAPTER} exists "
                  "(train one with train-generator, or pass --adapter DIR)")


class Pipeline:
    """Retriever + generator (+ adapter), loaded once; answers questions in batches."""

    def __init__(self, cfg: AnswerSettings, retriever: Any, model: Any, tokenizer: Any, kind: str, template: Any,
                 adapter: str | None, description: str, calibrations: dict[str, dict[str, Any] | None] | None = None,
                 schema: dict[str, Any] | None = None, yes_no_bias: float = 0.0, probe: answerability.Probe | None = None) -> None:
        self.cfg = cfg
        self.decoding = Decoding.of(cfg, schema)  # what a call that gives no decoding gets: cfg's, a JSON answer with --schema
        self.retriever = retriever
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.template = template
        self.adapter = adapter
        self.description = description  # which generator is used and why (main prints it on stderr)
        self._model_text = model_text_fn(tokenizer, template)
        self.calibrations = calibrations or {}  # decoding mode (abstention.MODES) -> the adapter's stored threshold, if used
        self.yes_no_bias = yes_no_bias  # a yes/no answer opens with yes where its polar score is above this (polar.PolarStart)
        self.probe = probe  # the adapter's answerability probe, with --abstain-probe (answer.probe)
        self._idf: focus.Idf | None = None  # word weights over the index's chunks; built when --passages first needs them
        # serve: a rag_pipeline.batching.DecodeEngine that decodes the rows of concurrent answer_batch calls together
        self.engine: Any = None
        self._own_engines: dict[int, Any] = {}  # greedy answers' engines by rows (prompt lookup, --draft-tokens) when serve gives none
        self._retrieval = threading.Lock()  # concurrent answer_batch calls (serve) retrieve one at a time

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The calibrated abstention applied to this pipeline's own decoding mode (None: greedy)."""
        return self.calibration_for(self.cfg.task)

    def calibration_for(self, task: str, grounded: bool | None = None, schema: str | None = None) -> dict[str, Any] | None:
        """The calibrated abstention a ``task`` answer gets in a decoding mode (default: this pipeline's); None where the
        adapter has none for that mode, or for a JSON answer under another schema than its calibration's (``schema``:
        canonical; default: this pipeline's)."""
        if task == "extract" and schema is None:
            schema = self.decoding.json_schema
        return applied(self.calibrations, task, self.cfg.grounded if grounded is None else grounded, schema)

    def answer_start(self, grounded: bool, task: str = "qa") -> str:
        """What a margin's answering continuation may open with in a decoding mode: ``cfg.answer_start``, or with
        ``calibrated`` what that mode's calibration was made with (``any`` when it records nothing)."""
        if self.cfg.answer_start != "calibrated":
            return self.cfg.answer_start
        return (applied(self.calibrations, task, grounded) or {}).get("answer_start", "any")

    @classmethod
    def load(cls, cfg: AnswerSettings, retriever: Any = None) -> Pipeline:
        """Check the cheap things first (device, index manifest, adapter metadata), then load the models.

        Args:
            retriever: an already loaded :class:`~rag_pipeline.index.retriever.Retriever` to share (e.g.
                between a base and a tuned pipeline); default: load ``cfg.index``.

        Raises:
            DeviceError: CUDA asked for and absent.
            IndexError_: index missing, corrupt or built with another embedder.
            InputError: adapter directory missing or not a finished train-generator output.
            ConfigError: adapter trained on another base model, or --template contradicting it.
        """
        device = resolve_device(cfg.device)
        schema = answer_schema(cfg, None, None) if cfg.schema else None  # a bad --schema fails before anything loads
        manifest = read_manifest(cfg.index) if retriever is None else None
        adapter, why = choose_adapter(cfg)
        meta = read_adapter_meta(adapter) if adapter else None
        if cfg.abstain_probe and not adapter:  # no --adapter, and none found where ask looks
            raise ConfigError("--abstain-probe reads the adapter's answerability probe: pass --adapter, or drop --abstain-probe")
        probe = answerability.read(adapter) if cfg.abstain_probe else None  # before the models load
        schema = schema or answer_schema(cfg, meta, adapter)
        template = adapter_template(meta, f"adapter {adapter}", cfg.template)
        base = cfg.base_model or (meta.base_model if meta else SMOLLM2_ID)
        check_orders(cfg, meta.abstention if meta else None, why)
        dtype = inference_dtype(cfg.dtype, device)
        model, tokenizer, kind = generator.load_generator(base, adapter, device=str(device), dtype=dtype, merge=True)
        kernels = inference.prepare(model) if cfg.kernels == "fast" else ""
        if retriever is None:
            retriever = Retriever.load(cfg.index, device=device.type, manifest=manifest)
        canonical = structured.canonical(schema) if schema is not None else None
        calibrations = abstention_of(meta.abstention if meta else None, cfg, canonical)
        calibration = applied(calibrations, cfg.task, cfg.grounded, canonical)
        if probe is not None:  # the settings hold it to free short answers: ``calibration`` is their threshold's
            answerability.check(probe, adapter, kind, model.config.hidden_size, model.config.num_hidden_layers,
                                calibration and calibration["threshold"])
        description = (f"generator: {why}; base {base}, template {template.name}, {device}, {dtype}"
                       + (f", {kernels}" if kernels else "")
                       + (", grounded decoding" if cfg.grounded else "") + (", both passage orders" if cfg.orders == "both" else "")
                       + (f", passages {cfg.passages} over the top {max(cfg.k, cfg.candidates)}" if cfg.passages != "chunks" else "")
                       + (f"; JSON answers under the schema {cfg.schema or ('object' if schema is structured.JSON_OBJECT else f'of {adapter}')}"
                          if schema is not None else "")
                       + ("; cited summaries" if cfg.task == "summary" else "")
                       + (f"; calibrated abstention (threshold "
                       f"{calibration['threshold']:.2f}{f' + bias {cfg.abstain_bias}' if cfg.abstain_bias else ''})"
                          if calibration else "")
                       + (f"; answerability probe ({answerability.describe(probe.readings)}, cutoff {probe.cutoff:.2f}"
                          f"{f' + bias {cfg.probe_bias}' if cfg.probe_bias else ''})" if probe else ""))
        return cls(cfg, retriever, model, tokenizer, kind, template, adapter, description, calibrations, schema,
                   stored_yes_no_bias(meta.abstention if meta else None), probe)

    def answer(self, question: str) -> Answer:
        """Answer one question (retrieval, threshold, prompt, generation)."""
        return self.answer_batch([question])[0]

    def prompt_texts(self, questions: list[str]) -> list[str]:
        """Each question's prompt as ``ask`` gives a short answer's to the generator: retrieved passages, fitted to the
        budget, rendered with the template (``calibrate --task yes-no`` and scripts read the model on it)."""
        docs, _, _ = self._retrieve(questions)
        return [self._model_text(self._render(q, self._fit(q, ds))) for q, ds in zip(questions, docs)]

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        """:meth:`prompt_texts`, encoded."""
        return [generator.encode_prompt(self.tokenizer, self.kind, t) for t in self.prompt_texts(questions)]

    def probe_inputs(self, texts: list[str], questions: list[str], pooled: bool) -> tuple[list[list[int]], list[int] | None]:
        """Each prompt's token ids, and with ``pooled`` each one's tokens from its question's first one to its end (what a
        probe's ``question`` reading averages: the question as the template shows it, and what the template puts after
        it; :func:`~rag_pipeline.generator.encode_prompt_from`), for :meth:`probe_states`.

        Raises:
            InputError: a prompt that does not end with its question and the template's closing text.
        """
        if not pooled:
            return [generator.encode_prompt(self.tokenizer, self.kind, t) for t in texts], None
        tail = self._question_tail
        out = []
        for text, q in zip(texts, questions):
            shown = shown_question(self.tokenizer, q)
            end = len(text) - len(tail)
            if not text.endswith(tail) or text[end - len(shown):end] != shown:
                raise InputError(f"the prompt does not end with the question {q[:60]!r} and the template's closing text: "
                                 "the answerability probe reads the question where the template puts it")
            out.append(generator.encode_prompt_from(self.tokenizer, self.kind, text, end - len(shown)))
        return [ids for ids, _ in out], [w for _, w in out]

    @functools.cached_property
    def _question_tail(self) -> str:
        """The model text the template puts after the question (the same for every question: rendered once)."""
        sentinel = "QUESTIONSENTINEL"
        text = self._model_text(self._render(sentinel, []))
        return text[text.rindex(sentinel) + len(sentinel):]

    def probe_states(self, prompts: list[list[int]], readings: tuple[answerability.Reading, ...],
                     windows: list[int] | None = None) -> list[Any]:
        """The answerability probe's state of each token-id sequence, as a float32 numpy vector: for each reading
        ``(layer, pool)`` in turn, the hidden state after decoder ``layer`` (0: the embeddings) at the last token
        (``last``) or averaged over the sequence's last ``windows[i]`` tokens (``question``: its question and what
        follows it, :meth:`probe_inputs`). ``ask --abstain-probe`` scores it (:mod:`~rag_pipeline.answer.probe`);
        ``scripts/hidden_state_probe.py`` fits the probe on the same reading.

        Layers short of the last are read by running the decoder up to the deepest of them and no further (forward
        hooks keep each layer's output, the very tensor ``output_hidden_states`` gives, and end the pass after the
        deepest: :class:`_Kept`); the embeddings or the last layer's state, which ``output_hidden_states`` gives after the final
        norm, by the whole forward pass.
        """
        import torch

        device = next(self.model.parameters()).device
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        wanted = sorted({layer for layer, _ in readings})
        hooked = layers is not None and 0 < wanted[0] and wanted[-1] < len(layers)
        out = []
        with torch.no_grad():
            for n, ids in enumerate(prompts):
                x = torch.tensor([ids], device=device)
                if hooked:
                    with _Kept([layers[layer - 1] for layer in wanted]) as kept:  # ends the pass after the deepest
                        decoder(input_ids=x, use_cache=False)
                    states = dict(zip(wanted, kept.outputs))
                else:
                    hidden = self.model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
                    states = {layer: hidden[layer] for layer in wanted}
                parts = [states[layer][0, -1] if pool == "last" else states[layer][0, -windows[n]:].float().mean(0)  # type: ignore[index]
                         for layer, pool in readings]
                out.append(torch.cat([p.float() for p in parts]).cpu().numpy())
        return out

    def polar_scores(self, questions: list[str]) -> list[float]:
        """Each question's :func:`~rag_pipeline.answer.polar.polar_score` (log P(yes opening) - log P(no opening)) as
        ``ask`` would answer it: its :meth:`prompt_ids`, the answer's first token. ``calibrate --task yes-no`` chooses
        :attr:`yes_no_bias` from them."""
        import torch

        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for prompt in self.prompt_ids(questions):
                ids = torch.tensor([prompt], device=device)
                extra = {"decoder_input_ids": torch.tensor([[self.model.config.decoder_start_token_id]], device=device)} \
                    if self.kind == "seq2seq" else {}
                out.append(polar.polar_score(self.model(input_ids=ids, **extra).logits[0, -1], self.tokenizer))
        return out

    def answer_batch(self, questions: list[str], contexts: list[list[Passage]] | None = None, margins: bool = False,
                     grounded: bool | None = None, decoding: Decoding | None = None,
                     on_text: Callable[[int, str], None] | None = None,
                     on_usage: Callable[[int, TokenUsage], None] | None = None) -> list[Answer]:
        """Answer questions in batches; greedy answers equal one-at-a-time ones.

        Args:
            questions: non-empty question strings.
            contexts: documents per question (``{id, doc_id?, title, text, score?}``) instead of retrieval (no retrieval threshold).
            margins: score every answer's null margin (``calibrate`` does), even without a calibration.
            grounded: decode grounded (True) or free (False) for this call; None: ``cfg.grounded``.
            decoding: generation settings for this call; None: ``cfg``'s (:meth:`Decoding.of`). One with a
                ``json_schema`` answers with a JSON object decoded under it (:mod:`~rag_pipeline.answer.structured`):
                no retrieval threshold, calibrated abstention or answer check (``null`` values are its abstention);
                one with task ``summary`` writes a cited summary (:mod:`~rag_pipeline.answer.summary`): the
                retrieval threshold and the summary's own calibrated abstention apply, the answer check does not.
            on_text: ``on_text(question index, text)`` streams each answer: the pieces of question ``i``'s final ``answer``
                in order, which join to exactly that text. Free decoding with ``answer_check`` off hands text on as it is
                decoded (held back while it may still become a refusal); a calibrated or checked answer, whole once decided.
            on_usage: ``on_usage(question index, usage)`` once per question, after generation.

        Raises:
            InputError: an empty question, a malformed context, a question too long for the budget,
                or sampling asked for where a calibrated abstention applies (it scores greedy answers).
        """
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"question {i + 1} of the batch is empty: every question needs text")
        if contexts is not None and len(contexts) != len(questions):
            raise InputError(f"{len(contexts)} contexts for {len(questions)} questions: pass one list of documents per question")
        grounded = self.cfg.grounded if grounded is None else grounded
        task, schema = (decoding or self.decoding).task, (decoding or self.decoding).schema
        if task == "extract" and grounded:
            raise InputError("a JSON answer is decoded under its schema, not grounded: answer it without grounding")
        if task == "extract" and margins and structured.null_object(schema) is None:
            raise InputError("the schema has a field that cannot be null, so no answer under it abstains: a JSON answer's "
                             "null margin needs every field to allow null")
        calibration = self.calibration_for(task, grounded, (decoding or self.decoding).json_schema)
        scored = margins or calibration is not None  # margins decide the answer: it is handed on whole, at the end
        if task == "extract" and scored:
            self._room_for_null(decoding or self.decoding)
        checked = self.cfg.answer_check != "off" and task == "qa"  # so may the answer check: a checked answer is handed on whole too
        if scored and decoding is not None and (decoding.do_sample or decoding.num_beams > 1):
            raise InputError("a calibrated abstention scores greedy answers: ask without sampling or beam search here")

        n = len(questions)
        t0 = time.perf_counter()
        if contexts is None:
            docs, best, top = self._retrieve(questions)
        else:
            docs, best = [[from_given(d, r) for r, d in enumerate(c, 1)] for c in contexts], [None] * n
            top = [[d["text"] for d in ds] for ds in docs]
        t_retrieval = (time.perf_counter() - t0) / max(n, 1)
        answers: list[Answer | None] = [None] * n
        todo, texts, shown, t_prompt, probed = [], [], {}, {}, {}
        for i, q in enumerate(questions):
            if task != "extract" and best[i] is not None and best[i] < self.cfg.min_score and \
                    word_share(q, top[i]) <= self.cfg.min_score_words:
                answers[i] = Answer(q, ABSTAIN, True, "threshold", [], docs[i], {"retrieval": t_retrieval, "prompt": 0.0, "generation": 0.0}, "")
                continue
            t1 = time.perf_counter()
            shown[i] = self._fit(q, docs[i])
            texts.append(self._model_text(self._render(tasks.asked(task, q, schema), shown[i])))
            t_prompt[i] = time.perf_counter() - t1
            todo.append(i)
        if self.probe is not None and task == "qa" and not grounded and calibration is not None and contexts is None:  # as chosen
            todo, texts, probed = self._probed(questions, todo, texts, shown, answers, t_retrieval, t_prompt)
        t2 = time.perf_counter()
        counts = [generator.DecodeCounts() for _ in todo]
        live = {i: _LiveText(self.tokenizer, lambda text, i=i: on_text(i, text)) for i in todo} if on_text and not (scored or checked) else {}
        extra: dict[str, Any] = {"questions": [questions[i] for i in todo], **({"decoding": decoding} if decoding is not None else {})}
        if on_text is not None or on_usage is not None or task == "extract":  # when asked, and for JSON (json_cut)
            extra.update(counts=counts, on_token=(lambda r, token: live[todo[r]].token(token)) if live else None)
        outs = self._generate(texts, [shown[i] for i in todo], scored, grounded, **extra) if texts else []
        if self.cfg.orders == "both" and task == "qa" and scored and not grounded:
            outs = self._surer_order(questions, todo, texts, shown, outs, counts, decoding)
        t_gen = (time.perf_counter() - t2) / max(len(texts), 1)
        for i, (raw, margin), count in zip(todo, outs, counts):
            timings = {"retrieval": t_retrieval, "prompt": t_prompt[i], "generation": t_gen}
            answers[i] = self._finished(task, questions[i], raw, shown[i], timings, margin, calibration, grounded, schema, count)
        self._review(answers, todo, texts, shown, counts, on_text is not None or on_usage is not None, task, grounded, margins, scored,
                     decoding)
        for i, (score, _) in probed.items():
            answers[i].probe = score  # type: ignore[union-attr]
        _settle(answers, live, dict(zip(todo, counts)), on_text, on_usage, {i: n for i, (_, n) in probed.items()})  # type: ignore[arg-type]
        return answers  # type: ignore[return-value]

    def _probed(self, questions: list[str], todo: list[int], texts: list[str], shown: dict[int, list[Passage]],
                answers: list[Answer | None], t_retrieval: float, t_prompt: dict[int, float]) -> tuple[list[int], list[str], dict[int, tuple[float, int]]]:
        """The answerability probe (:mod:`~rag_pipeline.answer.probe`) on each prompt about to be generated: a question it
        scores above its cutoff (plus ``probe_bias``) is answered with the abstention (``"probe"``) and not generated, unless its answer opens with
        yes or no and the probe was measured on no yes/no question. Returns the rows still to generate, their texts, and
        every probed question's score and prompt tokens read; the reading's time is added to each one's ``t_prompt``."""
        assert self.probe is not None
        probe = self.probe
        t0 = time.perf_counter()
        ids, windows = self.probe_inputs(texts, [questions[i] for i in todo], answerability.pooled(probe.readings))
        read = functools.partial(self.probe_states, ids, probe.readings, windows)
        states = read() if self.engine is None else self.engine.call(read)  # torch work on the engine's thread
        t_probe = (time.perf_counter() - t0) / max(len(texts), 1)
        keep, kept, probed, cutoff = [], [], {}, probe.cutoff + self.cfg.probe_bias
        for i, text, state, prompt in zip(todo, texts, states, ids):
            probed[i] = (probe.score(state), len(prompt))
            t_prompt[i] += t_probe
            if probed[i][0] > cutoff and not unmeasured_yes_no(probe.yes_no_questions, self.opens_yes_no(questions[i])):
                answers[i] = Answer(questions[i], ABSTAIN, True, "probe", [], shown[i],
                                    {"retrieval": t_retrieval, "prompt": t_prompt[i], "generation": 0.0}, "")
            else:
                keep.append(i)
                kept.append(text)
        return keep, kept, probed

    def _surer_order(self, questions: list[str], todo: list[int], texts: list[str], shown: dict[int, list[Passage]],
                     outs: list[tuple[str, float | None]], counts: list[generator.DecodeCounts],
                     decoding: Decoding | None) -> list[tuple[str, float | None]]:
        """``--orders both``: each scored short answer with more than one passage shown is decoded again with its passages in
        reverse order. The answer is the one of the order with the lower null margin (the order the model is surer of):
        where that is the reversed one, it takes the first one's place, and so do its prompt text (``texts``, row by row)
        and passages (``shown``, in the prompt's order, which its citations number), both in place. Its margin, which the
        calibrated threshold then judges, is the mean of the two orders' margins. ``counts`` count the tokens of both."""
        rows = [r for r, i in enumerate(todo) if len(shown[i]) > 1 and outs[r][1] is not None]
        flipped = [shown[todo[r]][::-1] for r in rows]
        again_texts = [self._model_text(self._render(tasks.asked("qa", questions[todo[r]]), docs)) for r, docs in zip(rows, flipped)]
        more = [generator.DecodeCounts() for _ in rows]
        again = self._generate(again_texts, flipped, True, False, decoding=decoding, counts=more,
                               questions=[questions[todo[r]] for r in rows]) if rows else []
        outs = list(outs)
        for r, docs, text, (raw, margin), count in zip(rows, flipped, again_texts, again, more):
            counts[r].prompt_tokens += count.prompt_tokens
            counts[r].completion_tokens += count.completion_tokens
            if margin is None:  # no margin of its own (a refusal that decoding could not rule out): the first answer stands
                continue
            first = outs[r][1]
            assert first is not None  # rows were chosen with a margin
            other_shown, mean = surer_order(first, margin)
            if other_shown:
                outs[r], texts[r], shown[todo[r]], counts[r].stopped = (raw, mean), text, docs, count.stopped
            else:
                outs[r] = (outs[r][0], mean)
        return outs

    def _room_for_null(self, c: Decoding) -> None:
        """InputError when a scored JSON answer's limit is so short that its close would be forced from the start: the
        null object, which the null margin would take for the model's abstention and decode again with it banned."""
        null = structured.null_object(c.schema)
        if null is None:
            return
        least = 2 * (len(self.tokenizer(null, add_special_tokens=False)["input_ids"]) + structured.CLOSE_SLACK)
        if c.max_new_tokens < least:
            raise InputError(f"a JSON answer of at most {c.max_new_tokens} tokens leaves no room for an answer beside the null "
                             f"margin's null object {null}: give at least {least} (--max-json-tokens; serve: max_tokens)")

    # ---- stages

    def _retrieve(self, questions: list[str]) -> tuple[list[list[Passage]], list[float | None], list[list[str]]]:
        """Per question: the passages to show (:meth:`_choose`), and the threshold's inputs, the same
        whatever ``passages`` chooses: the best dense cosine and the texts of the top k hits.

        ``chunks`` searches the top k, as always; ``rerank`` and ``windows`` search the top
        ``max(k, candidates)``. Its first k hits and best cosine are those of the top-k search for an
        exact index, and with hybrid retrieval up to 50 candidates (dense and BM25 are searched 50
        deep either way); a deeper search of an approximate index may find a higher cosine.
        """
        depth = self.cfg.k if self.cfg.passages == "chunks" else max(self.cfg.k, self.cfg.candidates)
        with self._retrieval:
            search = functools.partial(self.retriever.search_with_cosine, questions, depth, self.cfg.hybrid)
            hits, cosines = search() if self.engine is None else self.engine.call(search)  # torch work on the engine's thread
            best = [-1.0 if b is None else b for b in cosines]  # an empty index: always below the threshold
            found = [[{**h.to_dict(), "truncated": False} for h in hs] for hs in hits]
            top = [[p["text"] for p in ps[: self.cfg.k]] for ps in found]
            return [self._choose(q, ps) for q, ps in zip(questions, found)], best, top

    def _choose(self, question: str, found: list[Passage]) -> list[Passage]:
        """The passages shown, from ``found`` (best-ranked first): as found (``chunks``: the top k);
        the top ``candidates`` re-ranked by the question's words, then k (``rerank``); or their sentence
        windows that best match the question, within the words of the top k (``windows``)."""
        if self.cfg.passages == "chunks":
            return found
        pool, idf = found[: self.cfg.candidates], self.index_idf()
        if self.cfg.passages == "rerank":
            return focus.rerank(question, pool, idf, self.cfg.k)
        return focus.focus(question, pool, focus.words_of(found[: self.cfg.k]), idf)

    def index_idf(self) -> focus.Idf:
        """The IDF of words over the index's chunks (:class:`~rag_pipeline.answer.focus.Idf`), built on
        first use: one pass over the chunk store, which ``--passages chunks`` never makes."""
        if self._idf is None:
            t0 = time.perf_counter()
            self._idf = focus.Idf.of(c.text for c in self.retriever.store.iter_chunks())
            log.info("word weights of %d words over the index's chunks in %.1f s", len(self._idf.weights), time.perf_counter() - t0)
        return self._idf

    def _render(self, question: str, docs: list[Passage]) -> str:
        return render_user(self.template, question, docs)

    def _fit(self, question: str, docs: list[Passage]) -> list[Passage]:
        """The documents cut to the prompt budget (lowest-ranked dropped first); ``truncated`` marks cut ones
        (here, or before: ``--passages windows``)."""
        try:
            fitted, _ = fit_documents(self.tokenizer, self.template, question, docs, oracle_index=-1, answer="",
                                      max_tokens=self.cfg.max_prompt_tokens)
        except BudgetError as e:
            raise InputError(f"question {question[:60]!r} does not fit max_prompt_tokens={self.cfg.max_prompt_tokens} ({e}): "
                             "shorten it or raise --max-prompt-tokens") from None
        originals = {d["id"]: d for d in docs}

        def cut(d: Passage) -> bool:
            before = originals.get(d["id"], d)
            return bool(before.get("truncated")) or d["text"] != before["text"]

        return [{**d, "truncated": cut(d)} for d in fitted]

    def _generate(self, texts: list[str], docs: list[list[Passage]], margins: bool = False, grounded: bool = False,
                  decoding: Decoding | None = None, on_token: Callable[[int, int], None] | None = None,
                  counts: list[Any] | None = None, questions: list[str] | None = None) -> list[tuple[str, float | None]]:
        """(raw answer, null margin or None) per text; margins when calibrated (or asked for, as calibrate does).

        ``on_token(text index, token id)`` sees free decoding's tokens as they are decoded; ``counts``
        (:class:`~rag_pipeline.generator.DecodeCounts` per text) are filled in. ``questions`` (the texts' questions):
        a free short answer to a yes/no question opens with "Yes" or "No" (``yes_no_questions``, :mod:`~rag_pipeline.answer.polar`).
        """
        c = decoding or self.decoding
        engine = self._engine(c, len(texts))
        constraints = None
        if c.json_schema is not None:
            constraints = [structured.json_constraint(self.tokenizer, c.json_schema, c.max_new_tokens) for _ in texts]
        elif c.task == "summary" and grounded:
            constraints = [GroundedSummaryConstraint(self.tokenizer, [d["text"] for d in ds], summary.MAX_SENTENCES) for ds in docs]
        elif c.task == "summary":
            constraints = [summary.constraint(self.tokenizer, len(ds)) for ds in docs]
        elif grounded:
            yes_no = [polar.may_be_yes_no(q) for q in questions] if questions is not None else [True] * len(docs)
            constraints = [GroundedConstraint(self.tokenizer, [d["text"] for d in ds], yes_no=y) for ds, y in zip(docs, yes_no)]
        polar_rows = None
        if c.task == "qa" and not grounded and questions is not None and self.cfg.yes_no_questions == "yes-or-no":
            # unscored, the model may still open its refusal; scored, the margin of its own answer decides first
            polar_rows = polar.constraints(self.tokenizer, questions, () if margins else self._abstain_opening(), self.yes_no_bias)
            constraints = None if margins else polar_rows
        outs = self._decode(c, texts, margins, grounded, constraints, engine, on_token, counts)
        if margins and polar_rows:
            outs = self._polar_again(c, texts, outs, polar_rows, counts)
        if c.json_schema is not None and counts is not None:  # an object closed by force near the limit ran into it
            for con, count in zip(constraints or [], counts):
                count.stopped = count.stopped and not con.cut
        return outs

    def _polar_again(self, c: Decoding, texts: list[str], outs: list[tuple[str, float | None]], rows: list[Any],
                     counts: list[Any] | None) -> list[tuple[str, float | None]]:
        """Scored answers with each yes/no question's (``rows[i]`` not None) decoded again opening with Yes or No
        (:class:`~rag_pipeline.answer.polar.PolarStart`), withheld or not (the threshold is applied later); its margin
        stays the one its own answer was scored with, so the calibrated threshold decides whether to answer as for any
        question (unless it was calibrated on no yes/no question: :func:`~rag_pipeline.answer.abstention.withhold`), and
        the opening only how."""
        redo = [i for i, row in enumerate(rows) if row is not None]
        raws = generator.generate_answers(
            self.model, self.tokenizer, self.kind, [texts[i] for i in redo], max_new_tokens=c.max_new_tokens,
            batch_size=self.cfg.batch_size, constraints=[rows[i] for i in redo],
            counts=[counts[i] for i in redo] if counts is not None else None, static=self._static_cache(),
            engine=self._engine(c, len(redo)))
        again = dict(zip(redo, raws))
        return [(again.get(i, raw), margin) for i, (raw, margin) in enumerate(outs)]

    def opens_yes_no(self, question: str) -> bool:
        """Whether a free short answer to ``question`` opens with Yes or No (``yes_no_questions: yes-or-no``, a yes/no
        question, a tokenizer that spells both words: :mod:`~rag_pipeline.answer.polar`)."""
        return self.cfg.yes_no_questions == "yes-or-no" and polar.is_polar(question) and polar.usable(self.tokenizer)

    def _abstain_opening(self) -> list[int]:
        """The abstention sentence's first token (\"The\"): what a refusal opens with."""
        return self.tokenizer(ABSTAIN, add_special_tokens=False)["input_ids"][:1]

    def _decode(self, c: Decoding, texts: list[str], margins: bool, grounded: bool, constraints: list[Any] | None, engine: Any,
                on_token: Callable[[int, int], None] | None, counts: list[Any] | None) -> list[tuple[str, float | None]]:
        """:meth:`_generate`'s decode: with null margins (a JSON answer's abstention is its null object), or free."""
        if margins and c.json_schema is not None:  # the abstention is the null object; the answer, the best one that is not
            null = structured.null_object(c.schema)
            return generator.generate_with_margins(self.model, self.tokenizer, self.kind, texts, null, max_new_tokens=c.max_new_tokens,
                                                   batch_size=self.cfg.batch_size, constraints=constraints, counts=counts,
                                                   is_refusal=structured.is_null, openings=False,
                                                   opening=functools.partial(structured.null_opening, self.tokenizer),
                                                   static=self._static_cache(), engine=engine)
        if margins:
            return generator.generate_with_margins(self.model, self.tokenizer, self.kind, texts, ABSTAIN, max_new_tokens=c.max_new_tokens,
                                                   batch_size=self.cfg.batch_size, constraints=constraints, counts=counts,
                                                   ban_first_word=self.answer_start(grounded, c.task) == "not-refusal-word",
                                                   static=self._static_cache(), engine=engine)
        raws = generator.generate_answers(
            self.model, self.tokenizer, self.kind, texts, max_new_tokens=c.max_new_tokens, batch_size=self.cfg.batch_size,
            num_beams=c.num_beams, do_sample=c.do_sample, temperature=c.temperature, top_p=c.top_p, seed=c.seed,
            constraints=constraints, on_token=on_token, counts=counts, static=self._static_cache(), engine=engine,
        )
        return [(r, None) for r in raws]

    def _engine(self, c: Decoding, n: int) -> Any:
        """The decode engine a call's ``n`` rows join: serve's; else, for greedy answers with ``--kernels fast`` on a CPU and
        ``--draft-tokens`` above 0, this pipeline's own (one per size: one row gets one row's cache, several
        ``batch_size`` rows'), which checks prompt lookup's guesses in each step (:class:`rag_pipeline.batching.DecodeEngine`,
        made on first use and never started: it decodes in the calling thread, where the retriever's torch work runs
        too); None: ``generate`` (sampling, beam search, ``--draft-tokens 0``). In the calling thread the engine is the
        faster for batches too (the whole test split in batches of 16: 0.26 s a question against generate's 0.32-0.34,
        docs/results.md); on a started engine's thread, beside the caller's torch work, it was the slower (0.44 s)."""
        if self.engine is not None:
            return self.engine
        if self.cfg.draft_tokens < 1 or not self._static_cache() or c.do_sample or c.num_beams > 1:
            return None
        rows = 1 if n == 1 else self.cfg.batch_size
        if rows not in self._own_engines:
            usable = batching.supported(self.model, self.kind)
            self._own_engines[rows] = batching.DecodeEngine(self.model, rows, self.cfg.draft_tokens) if usable else False
        return self._own_engines[rows] or None

    def _static_cache(self) -> bool:
        """Whether decoding goes into a preallocated cache: ``--kernels fast`` on a CPU (on a GPU transformers would compile
        the model for it, once per cache length)."""
        return self.cfg.kernels == "fast" and next(self.model.parameters()).device.type == "cpu"

    def _finished(self, task: str, question: str, raw: str, docs: list[Passage], timings: dict[str, float], margin: float | None,
                  calibration: dict[str, Any] | None, grounded: bool, schema: dict[str, Any] | None,
                  count: generator.DecodeCounts) -> Answer:
        """One generated answer as ``task`` shows it: a JSON answer (``schema``: its schema), a summary, or a short answer."""
        if task == "extract":
            assert schema is not None  # a JSON answer's decoding always has one
            return self._finish_json(question, raw, docs, timings, schema, margin, calibration, not count.stopped)
        if task == "summary":
            return self._finish_summary(question, raw, docs, timings, margin, calibration)
        return self._finish(question, raw, docs, timings, margin, calibration, grounded=grounded)

    def _finish(self, question: str, raw: str, docs: list[Passage], timings: dict[str, float], margin: float | None,
                calibration: dict[str, Any] | None, *, grounded: bool) -> Answer:
        if is_abstention(raw):
            return Answer(question, ABSTAIN, True, "generator", [], docs, timings, raw, margin)
        if withhold(margin, calibration, self.cfg.abstain_bias, not grounded and self.opens_yes_no(question)):
            return Answer(question, ABSTAIN, True, "calibration", [], docs, timings, raw, margin)
        answer = raw.strip()
        citations = [
            Citation(n, d["id"], d["doc_id"], d["title"], d["source"], d["score"], make_snippet(d["text"], answer, self.cfg.snippet))
            for n in parse_citations(answer, len(docs)) for d in [docs[n - 1]]
        ]
        return Answer(question, answer, False, None, citations, docs, timings, raw, margin)

    def _finish_json(self, question: str, raw: str, docs: list[Passage], timings: dict[str, float], schema: dict[str, Any],
                     margin: float | None = None, calibration: dict[str, Any] | None = None, cut: bool = False) -> Answer:
        """A JSON answer: the object parsed and checked against ``schema``, its values traced to the shown passages; with a
        calibrated abstention, the null object (every field null) when the best answer's null margin is above the threshold.
        A parsed answer that is the null object is an abstention too (reason "generator"). ``cut``: the decode ran into
        the token limit (the decoder closed the object early)."""
        if withhold(margin, calibration, self.cfg.abstain_bias):
            null = structured.null_object(schema) or "{}"
            return Answer(question, null, True, "calibration", [], docs, timings, raw, margin, data=json.loads(null), fields={},
                          unsupported_fields=[])
        data, error = structured.parse(raw, schema)
        fields, unsupported = structured.field_citations(data, [d["text"] for d in docs]) if error is None else ({}, [])
        numbers = sorted({n for ns in fields.values() for n in ns})
        citations = [Citation(n, d["id"], d["doc_id"], d["title"], d["source"], d["score"],
                              make_snippet(d["text"], next(str(v) for p, v in structured.leaves(data) if n in fields.get(p, ())),
                                           self.cfg.snippet))
                     for n in numbers for d in [docs[n - 1]]]
        null = error is None and structured.is_null(raw)  # the model's own abstention, as calibrate counts it
        return Answer(question, raw.strip(), null, "generator" if null else None, citations, docs, timings, raw, margin,
                      data=data, fields=fields, unsupported_fields=unsupported, json_error=error, json_cut=cut and error is None)

    def _finish_summary(self, question: str, raw: str, docs: list[Passage], timings: dict[str, float], margin: float | None = None,
                        calibration: dict[str, Any] | None = None) -> Answer:
        """A summary: each sentence with its citations, checked against the passages it cites (:func:`~rag_pipeline.answer.summary.citation_quality`);
        with a calibrated summary abstention, the best non-abstaining summary unless its null margin is above the threshold."""
        if is_abstention(raw):
            return Answer(question, ABSTAIN, True, "generator", [], docs, timings, raw, margin)
        if withhold(margin, calibration, self.cfg.abstain_bias):
            return Answer(question, ABSTAIN, True, "calibration", [], docs, timings, raw, margin)
        whole = summary.complete_part(raw)
        error = None if whole == raw.strip() else (
            "the token limit cut the summary's last sentence (it is incomplete and not in sentences): raise "
            "--max-summary-tokens (serve: max_tokens)")
        checked = summary.citation_quality(summary.sentences_of(whole), [d["text"] for d in docs])
        numbers = sorted({n for s in checked for n in s["cited"] if 1 <= n <= len(docs)})
        citations = [Citation(n, d["id"], d["doc_id"], d["title"], d["source"], d["score"],
                              make_snippet(d["text"], next(s["text"] for s in checked if n in s["cited"]), self.cfg.snippet))
                     for n in numbers for d in [docs[n - 1]]]
        # the answer keeps the cut tail: a streaming client already has it (streamed text only grows)
        return Answer(question, raw.strip(), False, None, citations, docs, timings, raw, margin, sentences=checked, summary_error=error)

    def _review(self, answers: list[Answer | None], todo: list[int], texts: list[str], shown: dict[int, list[Passage]],
                counts: list[Any], usage: bool, task: str, grounded: bool, margins: bool, scored: bool, decoding: Decoding | None) -> None:
        """What follows a short answer's decode where it is handed on whole (``scored``: calibrated or margins asked for; or
        the answer check on), in place: the answer check (:meth:`_check`), then ``reread`` (:meth:`_reread`). ``counts``:
        the rows' DecodeCounts (in ``todo``'s order), which the check's decodes add to when ``usage`` is reported."""
        checked = self.cfg.answer_check != "off" and task == "qa"
        if checked:
            self._check(answers, dict(zip(todo, texts)), shown, grounded, dict(zip(todo, counts)) if usage else {}, scored, decoding)  # type: ignore[arg-type]
        if task == "qa" and self.cfg.reread == "relevant" and (scored or checked):
            self._reread(answers, todo, dict(zip(todo, counts)), margins, grounded, decoding)

    def _reread(self, answers: list[Answer | None], todo: list[int], counts: dict[int, Any], margins: bool, grounded: bool,
                decoding: Decoding | None) -> None:
        """``reread``, in place: an answer that cites only passages holding fewer of the question's content words than another
        shown passage (:func:`~rag_pipeline.answer.check.misread`) is answered again, as this call answers (its margins,
        threshold and answer check), from the shown passages holding the most, and that answer takes its place
        (``rejected`` "misread"; shown: ``fallback`` "reread" and the first answer in ``raw``; withheld or refused: the
        second answer in ``raw``), its citations numbered as the passages were first shown. Its margin is the higher of
        the two, the one the threshold judged last (both passed it where it is shown). ``counts`` (question index ->
        DecodeCounts) gain the second answer's tokens."""
        picks: dict[int, list[int]] = {}
        for i in todo:
            a = answers[i]
            if a is not None and not a.abstained and (best := misread(a.question, [d["text"] for d in a.retrieved],
                                                                        [c.n for c in a.citations])) is not None:
                picks[i] = best
        if not picks:
            return
        rows, used = list(picks), {}  # type: ignore[var-annotated]
        again = self.answer_batch([answers[i].question for i in rows], contexts=[[answers[i].retrieved[j] for j in picks[i]] for i in rows],  # type: ignore[union-attr]
                                  margins=margins, grounded=grounded, decoding=decoding, on_usage=used.__setitem__)
        for r, (i, b) in enumerate(zip(rows, again)):
            a = answers[i]
            assert a is not None
            numbers = first_numbers(a.retrieved, b.retrieved)  # the second prompt's order (--orders both may swap it)
            citations = [dataclasses.replace(c, n=numbers[c.n], score=a.retrieved[numbers[c.n] - 1]["score"]) for c in b.citations]
            timings = {k: a.timings.get(k, 0.0) + (b.timings.get(k, 0.0) if k != "retrieval" else 0.0) for k in a.timings}
            margin = b.margin if a.margin is None or b.margin is None else max(a.margin, b.margin)
            answers[i] = dataclasses.replace(b, answer=b.answer if b.abstained else renumber(b.answer, numbers), citations=citations,
                                             retrieved=a.retrieved, timings=timings, raw=b.raw if b.abstained else a.raw, margin=margin,
                                             rejected="misread", fallback=None if b.abstained else "reread")
            if i in counts and r in used:
                counts[i].prompt_tokens += used[r].prompt_tokens
                counts[i].completion_tokens += used[r].completion_tokens
                counts[i].stopped = used[r].finish_reason == "stop"

    def _check(self, answers: list[Answer], texts: dict[int, str], shown: dict[int, list[Passage]], grounded: bool,
               counts: dict[int, Any], scored: bool = False, decoding: Decoding | None = None) -> None:
        """The answer check (``cfg.answer_check``), in place: an answer with no content word, or
        whose cited passages (all shown ones when it cites none) lack most of its words
        (:func:`~rag_pipeline.answer.check.cited_problem`), is decoded again grounded, or abstained on.

        ``scored``: the answers were decoded with the abstention ruled out and passed the calibrated
        threshold (or calibrate scores them), so the grounded decode rules it out too: the margin
        decided to answer, and the best span of a shown passage is that answer. Otherwise the
        grounded decode may abstain (greedy abstention). ``decoding``: the call's settings (a request's token limit),
        None: ``cfg``'s."""
        def problem(a: Answer) -> str | None:
            return None if a.abstained else cited_problem(a.answer, [c.n for c in a.citations], [d["text"] for d in a.retrieved],
                                                          polar.may_be_yes_no(a.question))

        bad = {i: why for i, a in enumerate(answers) if (why := problem(a))}
        redo = [i for i in bad if self.cfg.answer_check == "grounded" and not grounded]
        redone: dict[int, Answer] = {}
        if redo:
            more = [type(counts[i])() for i in redo] if counts else None
            extra: dict[str, Any] = {"questions": [answers[i].question for i in redo], "decoding": decoding, **({"counts": more} if more else {})}
            outs = self._generate([texts[i] for i in redo], [shown[i] for i in redo], scored, True, **extra)
            for k, (i, (raw, _)) in enumerate(zip(redo, outs)):
                a = answers[i]
                redone[i] = self._finish(a.question, raw, a.retrieved, a.timings, None, None, grounded=True)
                if more:
                    counts[i].prompt_tokens += more[k].prompt_tokens
                    counts[i].completion_tokens += more[k].completion_tokens
                    counts[i].stopped = more[k].stopped
        for i, why in bad.items():
            a, b = answers[i], redone.get(i)
            if b is not None and not b.abstained and problem(b) is None:
                answers[i] = dataclasses.replace(b, raw=a.raw, margin=a.margin, rejected=why, fallback="grounded")
            else:
                answers[i] = dataclasses.replace(a, answer=ABSTAIN, abstained=True, abstain_reason=why, citations=[], rejected=why)


class _Kept:
    """A context that keeps the output of each of ``modules`` (``outputs``, in their order) through one forward pass and
    ends the pass once the last of them has run: its hook raises :class:`_Stopped`, which the context swallows. The
    hooks are removed on exit."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules, self.outputs = modules, [None] * len(modules)

    def __enter__(self) -> _Kept:
        def hook(i: int) -> Callable[..., None]:
            def keep(module: Any, args: Any, output: Any) -> None:
                self.outputs[i] = output[0] if isinstance(output, tuple) else output
                if i == len(self.modules) - 1:
                    raise _Stopped
            return keep

        self.handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        for h in self.handles:
            h.remove()
        return kind is _Stopped


class _Stopped(Exception):
    """Raised by :class:`_Kept`'s last hook to end the forward pass."""


def _settle(answers: list[Answer], live: dict[int, _LiveText], counts: dict[int, Any],
            on_text: Callable[[int, str], None] | None, on_usage: Callable[[int, TokenUsage], None] | None,
            probed: dict[int, int]) -> None:
    """Hand each caller what is left of each answer's text, then its usage (``counts``: question index -> DecodeCounts;
    ``probed``: question index -> prompt tokens the answerability probe read, a pass over the prompt of its own)."""
    for i, ans in enumerate(answers):
        if on_text is not None:
            sent = live[i].sent if i in live else ""
            if not ans.answer.startswith(sent):  # the contract with a streaming caller is broken: say so loudly
                raise RuntimeError(f"streamed text {sent!r} is not a prefix of the final answer {ans.answer!r}")
            if len(ans.answer) > len(sent):
                on_text(i, ans.answer[len(sent):])
        if on_usage is not None:
            c = counts.get(i)  # None: abstained on the retrieval threshold or the probe, nothing generated
            length = c is not None and not c.stopped and not ans.abstained
            read = (c.prompt_tokens if c else 0) + probed.get(i, 0)
            on_usage(i, TokenUsage(read, c.completion_tokens if c else 0, "length" if length else "stop"))


# ---------------------------------------------------------------------------------- output


def format_answer(ans: Answer, cfg: AskConfig) -> str:
    """The human-readable answer: text, cited sources (number, title, source, score, snippet), context."""
    lines = [ans.answer]
    if ans.json_error:
        lines.append(f"  (not a valid answer: {ans.json_error}; raise --max-json-tokens)")
    elif ans.fields is not None:
        if ans.json_cut:
            lines.append("  (closed at the token limit: its last value is cut short; raise --max-json-tokens)")
        lines += [f"  {path}: [{', '.join(map(str, ns))}]" for path, ns in ans.fields.items()]
        lines += [f"  {path}: (no shown passage holds this value)" for path in ans.unsupported_fields or []]
    elif ans.sentences is not None:
        if ans.summary_error:
            lines.append(f"  ({ans.summary_error})")
        for k, sent in enumerate(ans.sentences, 1):
            if not sent["supported"]:
                lines.append(f"  (sentence {k}: the passages it cites do not hold most of its words)")
            elif not all(sent["precise"]):
                extra = [n for n, ok in zip(sent["cited"], sent["precise"]) if not ok]
                lines.append(f"  (sentence {k}: citation {', '.join(f'[{n}]' for n in extra)} is not needed)")
    if ans.abstain_reason == "threshold":
        lines.append(f"  (no generation: the best retrieval cosine is below min_score {cfg.min_score} and the passages hold at most "
                     f"{cfg.min_score_words:.0%} of the question's words)")
    elif ans.abstain_reason in ("no_content", "unsupported"):
        what = "holds no content word" if ans.abstain_reason == "no_content" else "is not supported by the passage it cites"
        lines.append(f"  (the generator's answer {ans.raw.strip()!r} {what}; not shown as an answer)")
    elif ans.abstain_reason == "calibration":
        lines.append(f"  (withheld by the calibrated abstention: null margin {ans.margin:.2f} above the adapter's threshold; "
                     f"the answer would have been {ans.raw!r}; --abstain-bias > 0 answers more often)")
    elif ans.abstain_reason == "probe":
        lines.append(f"  (no generation: the adapter's answerability probe scores the question {ans.probe:.2f}, above its cutoff; "
                     f"--probe-bias above 0 holds fewer; drop --abstain-probe to have it answered, or withheld by the other checks)")
    if ans.citations:
        lines.append("\nSources:")
        for c in ans.citations:
            score = "" if c.score is None else f"  score {c.score:.3f}"
            lines.append(f"  [{c.n}] {c.title or '(untitled)'}  ({c.source}){score}\n      {c.snippet}")
    elif not ans.abstained and ans.fields is None:
        lines.append("  (the answer cites no document)")
    if cfg.show_context:
        lines.append("\nContext shown to the generator:" if ans.raw or ans.abstain_reason == "probe" else "\nRetrieved (not shown to the generator):")
        for i, d in enumerate(ans.retrieved, 1):
            score = "" if d["score"] is None else f"  score {d['score']:.3f}"
            cut = "  [truncated]" if d.get("truncated") else ""
            lines.append(f"  [{i}] {d['title'] or '(untitled)'}  ({d['source']}#{d['position']}){score}{cut}\n      {' '.join(d['text'].split())}")
    return "\n".join(lines)


def emit(ans: Answer, cfg: AskConfig, out: IO[str], compact: bool = False) -> None:
    """Print one answer as text or JSON (one line with ``compact``)."""
    if cfg.json:
        out.write(json.dumps(ans.to_dict(), ensure_ascii=False, indent=None if compact else 2) + "\n")
    else:
        out.write(format_answer(ans, cfg) + ("\n\n" if compact else "\n"))
    out.flush()


def _timing_line(ans: Answer) -> str:
    t = ans.timings
    return f"retrieval {t['retrieval']:.3f} s, prompt {t['prompt']:.3f} s, generation {t['generation']:.3f} s"


def load_questions(path: str, fields: QAFields | None = None) -> list[QAItem]:
    """The questions of a QA file (``fields``: its field names); empty ones are an InputError naming their ids."""
    items = load_qa(path, fields)
    empty = [it.id for it in items if not it.question.strip()]
    if empty:
        raise InputError(f"{path}: {len(empty)} empty question(s) (ids {', '.join(empty[:3])}): fix or remove those lines")
    return items


def answer_items(pipe: Answerer, items: list[QAItem], chunk: int) -> Iterator[tuple[list[QAItem], list[Answer]]]:
    """``pipe.answer_batch`` over ``items``, ``chunk`` at a time: (items, their answers) per chunk."""
    for start in range(0, len(items), chunk):
        batch = items[start:start + chunk]
        yield batch, pipe.answer_batch([it.question for it in batch])


def answer_file(pipe: Pipeline, cfg: AskConfig, items: list[QAItem] | None = None) -> dict[str, Any]:
    """Answer a QA file in batches; one JSON line per question (answer + the gold fields). Returns a summary.

    Args:
        items: the questions of ``cfg.questions`` when already read (:func:`main` reads them before the models load).
    """
    from tqdm import tqdm

    items = items if items is not None else load_questions(cfg.questions, cfg.qa_fields())
    items = items[: cfg.limit] if cfg.limit else items
    readable = not cfg.output and not cfg.json  # a person reads it: text beside the gold answer, no progress bar
    t0, abstained = time.perf_counter(), Counter({"threshold": 0, "generator": 0, "calibration": 0})
    with (atomic_file(cfg.output) if cfg.output else nullcontext(sys.stdout)) as out, \
            tqdm(total=len(items), desc="ask", unit="q", disable=not cfg.progress or readable, file=sys.stderr) as bar:
        for batch, answers in answer_items(pipe, items, cfg.batch_size * BATCHES_PER_CALL):
            for it, ans in zip(batch, answers):
                if readable:
                    out.write(format_with_gold(it, ans, cfg) + "\n\n")
                else:
                    out.write(json_line({"id": it.id, **ans.to_dict(), "gold_answers": it.answers, "answerable": it.answerable,
                                         "gold_doc_id": it.doc_id}))
                out.flush()
                if ans.abstain_reason:
                    abstained[ans.abstain_reason] += 1
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    return {"questions": len(items), "seconds": seconds, "questions_per_s": len(items) / max(seconds, 1e-9), "abstained": abstained}


def format_with_gold(item: QAItem, ans: Answer, cfg: AskConfig) -> str:
    """A question of a QA file, its answer with sources (:func:`format_answer`) and its gold answer."""
    gold = " | ".join(item.answers) if item.answers else ("(unanswerable: abstaining is right)" if not item.answerable else "(none given)")
    body = "\n".join(f"   {line}" if line.strip() else "" for line in format_answer(ans, cfg).split("\n")).lstrip()
    return f"Q: {item.question}\nA: {body}\n   gold: {gold}"


def answer_stream(pipe: Pipeline, cfg: AskConfig, lines: Iterable[str], out: IO[str]) -> int:
    """Answer each non-empty line as it arrives; a failing line prints its error and the rest go on."""
    status = 0
    for line in lines:
        question = line.strip()
        if not question:
            continue
        try:
            emit(pipe.answer(question), cfg, out, compact=True)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            status = 2
    return status


def run(cfg: AskConfig, pipe: Answerer | None = None) -> list[Answer]:
    """Library entry: the answers to ``cfg.question``, or to every question of ``cfg.questions``.

    Nothing is printed or written (:func:`main` does that, and answers standard input too).

    Raises:
        ConfigError: neither a question nor a questions file was given.
    """
    if not (cfg.question or cfg.questions):
        raise ConfigError("nothing to answer: pass a question, or --questions FILE.jsonl")
    pipe = pipe or Pipeline.load(cfg)
    if cfg.question:
        return pipe.answer_batch([cfg.question])
    return [a for _, answers in answer_items(pipe, load_questions(cfg.questions, cfg.qa_fields()), cfg.batch_size * BATCHES_PER_CALL) for a in answers]


def stdin_lines(stream: IO[str] | None = None) -> Iterator[str]:
    """Standard input's lines as they arrive, read as UTF-8 whatever the locale.

    Raises:
        InputError: a line is not UTF-8 text (the questions before it were answered).
    """
    stream = stream or sys.stdin
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (tests, embedding)
        yield from iter(stream.readline, "")
        return
    for n, line in enumerate(iter(raw.readline, b""), 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"line {n} of standard input is not UTF-8 text (byte {line[e.start]:#04x} at offset {e.start}): "
                             "re-encode it, e.g. iconv -f latin1 -t utf-8 questions.txt | rag-pipeline ask") from None


def piped_questions(lines: Iterator[str]) -> Iterator[str]:
    """``lines`` from its first non-blank one on (blank lines before it are read and dropped).

    Raises:
        InputError: the input ends before any question (empty, or only blank lines).
    """
    for line in lines:
        if line.strip():
            return itertools.chain([line], lines)
    raise InputError("no question on standard input (it was empty or held only blank lines): pipe questions one per line, "
                     "pass one as an argument (ask \"who founded X?\"), or answer a file with --questions FILE")


def main(cfg: AskConfig) -> int:
    """``rag-pipeline ask``: setup (load once) -> answer (argument, stdin or file) -> print. Returns the exit status."""
    # Everything the user gave is checked before the models load (tens of seconds): the output path,
    # the questions file, and piped input that holds no question.
    if cfg.output:
        check_file_target(cfg.output)
        check_separate([cfg.questions], cfg.output)
    items = load_questions(cfg.questions, cfg.qa_fields()) if cfg.questions else None
    piped = None
    if not (cfg.question or cfg.questions) and not sys.stdin.isatty():
        piped = piped_questions(stdin_lines())  # waits for the first question, then loads
    pipe = Pipeline.load(cfg)
    print(pipe.description, file=sys.stderr, flush=True)
    if cfg.questions:
        s = answer_file(pipe, cfg, items)
        a = s["abstained"]
        checked = a["no_content"] + a["unsupported"]
        print(f"answered {s['questions']} questions in {s['seconds']:.1f} s ({s['questions_per_s']:.2f} q/s; abstained: "
              f"{a['threshold']} by threshold, {a['generator']} by the generator, {a['calibration']} by the calibrated threshold"
              + (f", {checked} by the answer check" if checked else "") + ")"
              + (f" -> {cfg.output}" if cfg.output else ""), file=sys.stderr)
        return 0
    if cfg.question:
        ans = pipe.answer(cfg.question)
        emit(ans, cfg, sys.stdout)
        log.info("(%s)", _timing_line(ans))
        return 0
    if piped is not None:
        return answer_stream(pipe, cfg, piped, sys.stdout)
    print("reading questions from standard input, one per line (Ctrl-D ends)", file=sys.stderr, flush=True)
    return answer_stream(pipe, cfg, stdin_lines(), sys.stdout)
