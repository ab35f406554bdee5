"""The settings of answering: one type that ``ask``, ``serve``, ``evaluate`` and ``calibrate`` share.

:class:`Answering` holds how questions are answered, whatever the generator: retrieval (``index``,
``k``, ``hybrid``, ``min_score``), the prompt (``template``, which passages it shows: ``passages``,
``candidates``; ``max_prompt_tokens``), decoding, abstention, the answer check and the hardware.
:class:`AnswerSettings` adds which generator (``adapter``, ``no_adapter``) and is what
:meth:`rag_pipeline.answer.ask.Pipeline.load` takes.

The commands' configs inherit these fields, so a flag means the same thing, has the same default
and is checked the same way everywhere. A command that needs another default redeclares the field
(serve's ``snippet``, evaluate's ``batch_size``); one that sets a field itself (serve decodes as
each request asks, calibrate measures greedy answers) declares it with
:func:`~rag_pipeline.config.fixed`: no flag, no YAML key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rag_pipeline.config import opt
from rag_pipeline.device import check_device, check_dtype
from rag_pipeline.errors import ConfigError
from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
from rag_pipeline.prompt import DEFAULT_TEMPLATE

DEFAULT_ADAPTER = "runs/disfl_qa/adapter"  # where the documented train-generator run writes

Abstention = Literal["calibrated", "greedy"]
AnswerCheck = Literal["grounded", "abstain", "off"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Kernels = Literal["fast", "plain"]
Passages = Literal["chunks", "rerank", "windows"]
Task = Literal["qa", "summary", "extract"]
AnswerStart = Literal["calibrated", "any", "not-refusal-word"]
YesNoQuestions = Literal["yes-or-no", "free"]
Orders = Literal["one", "both"]
Reread = Literal["relevant", "off"]

# (field, lowest value) of the integer settings
_LOWEST = (("k", 1), ("max_new_tokens", 1), ("num_beams", 1), ("batch_size", 1), ("max_prompt_tokens", 64), ("snippet", 20),
           ("candidates", 1), ("max_json_tokens", 1), ("max_summary_tokens", 1), ("draft_tokens", 0))


@dataclass
class Answering:
    """How questions are answered, whatever the generator (defaults < ``--config`` YAML < flags)."""

    index: str = opt("indexes/disfl_qa", "index directory written by build-index")
    base_model: str = opt("", f"base generator; empty: the adapter's recorded base, else {SMOLLM2_ID}")
    template: str = opt("", f"prompt template; empty: the adapter's recorded template, else {DEFAULT_TEMPLATE}")
    k: int = opt(2, "chunks retrieved and shown to the generator (2, as configs/raft.yaml trains: oracle + 1 distractor)")
    hybrid: bool = opt(True, "fuse BM25 with dense retrieval by reciprocal rank (the default: Recall@1 0.83 against 0.72 dense on the "
                             "bundled test split); --no-hybrid for dense only (the min-score threshold still uses the dense cosine)")
    min_score: float = opt(0.25, "abstain without generating when the best retrieval cosine is below this (the highest cosine "
                                 "that holds none of the dev split's answerable questions; bench/bench_ask.py --scores)")
    min_score_words: float = opt(0.5, "the min-score threshold abstains only when the retrieved passages also hold at most this share "
                                      "of the question's content words (1 = the cosine alone). At min_score 0.25, answerable questions "
                                      "held: 0%% (Disfl-QA dev), 1.8%% (corpus/coqa_ood); off-topic questions refused by this "
                                      "threshold or by the generator: 80%% and 92.5%%")
    passages: Passages = opt(
        "chunks", "what the prompt shows (docs/results.md, 'Putting the answer in the prompt': gold answer in the prompt on "
                  "Disfl-QA test / other-domain stories): chunks = the top k chunks (93.5%% / 86.3%% at k = 2); rerank = the top "
                  "--candidates chunks re-ranked by the IDF of the question's words they hold, then the first k, whole (94.9%% / "
                  "88.1%% for the top 5 -> 2); windows = sentence windows (a matching sentence and its neighbours) over the top "
                  "--candidates, within the words k whole chunks would take (94.2%% / 86.8%% over the top 5). End to end with the reference adapter "
                  "on the other-domain stories: F1 27.2 chunks, 27.4 rerank, 23.8 windows; whole Disfl-QA test split: overall F1 33.8 chunks, 30.6 rerank")
    candidates: int = opt(5, "with --passages rerank or windows: how many retrieved chunks are read to choose from (at least k; "
                             "5 as measured)")
    max_prompt_tokens: int = opt(1024, "token budget of the prompt; documents are cut (lowest-ranked dropped first) to fit")
    max_new_tokens: int = opt(48, "generation length; answers are short spans with a citation")
    num_beams: int = opt(1, "beam search width (1 = greedy)")
    do_sample: bool = opt(False, "sample instead of greedy/beam decoding (seeded)")
    temperature: float = opt(0.7, "sampling temperature (with --do-sample)")
    top_p: float = opt(0.9, "nucleus sampling mass (with --do-sample)")
    seed: int = opt(0, "seed for sampling; the same seed and inputs give the same answers")
    task: Task = opt("qa", "qa: a short answer citing its passage [n]; summary: one to four sentences about the request, each "
                           "citing its passages (rag_pipeline.answer.summary); extract: one JSON object that follows --schema "
                           "(rag_pipeline.answer.structured). Summaries and JSON are decoded under a grammar, so their form is "
                           "guaranteed")
    schema: str = opt("", "with --task extract: the JSON schema file the answer follows (values traced to the passages that "
                          "hold them); 'object': any JSON object; empty: the adapter's own (the schema of the JSON answers "
                          "its training records gave), else any JSON object")
    max_json_tokens: int = opt(256, "generation length of a JSON answer (--task extract)")
    max_summary_tokens: int = opt(160, "generation length of a summary (--task summary)")
    grounded: bool = opt(False, "grounded decoding: the answer can only copy a span of one shown document, followed by its "
                                "citation, or be the abstention sentence; with --task summary, every sentence is such a span "
                                "(rag_pipeline.answer.grounded)")
    abstention: Abstention = opt(
        "calibrated", "calibrated: withhold an answer when its null margin is above the threshold stored in the adapter by "
                      "rag-pipeline calibrate (greedy when the adapter has none); greedy: abstain only when greedy decoding says so")
    abstain_bias: float = opt(0.0, "added to the calibrated threshold: > 0 answers more often, < 0 abstains more often")
    abstain_probe: bool = opt(False, "also withhold a short answer when the adapter's answerability probe (a read-out of the "
                                     "generator's hidden state, scripts/hidden_state_probe.py --save) scores its prompt above the "
                                     "probe's cutoff (free short answers under the calibrated abstention, retrieved passages): on "
                                     "Disfl-QA's test split overall F1 41.1 against 38.6, but more false abstentions, in domain "
                                     "and on other domains (docs/results.md, 'Answerability probe')")
    probe_bias: float = opt(0.0, "added to the answerability probe's cutoff (--abstain-probe): > 0 holds fewer questions, < 0 "
                                 "more (the reference's: -0.369 and +0.201 move it to the cutoffs the dev split chose at 15%% and "
                                 "12%% false abstentions; docs/results.md, 'Answerability probe')")
    orders: Orders = opt(
        "one", "one = each short answer decoded once, its passages in retrieved order; both = decoded again with the passages "
               "reversed: the answer shown is the one of the order with the lower null margin (the order the model is surer "
               "of; its citations number the passages as that prompt showed them), withheld when the mean of the two margins "
               "is over the calibrated threshold. Twice the decoding; free short answers under the calibrated abstention. "
               "Reference adapter, Disfl-QA test split, with --abstain-probe: overall F1 42.2, HasAns F1 45.5, NoAns 32.9%%, "
               "false abstentions 13.1%% (docs/results.md, 'Both orders in ask')")
    answer_start: AnswerStart = opt(
        "calibrated", "what the best answering continuation (whose margin calibrated abstention scores) may open with: any = any "
                      "token; not-refusal-word = not the abstention's first word (\"The\", with which a model that wanted to refuse "
                      "opens its answer); calibrated = as the adapter's threshold was calibrated (any when it records none)")
    yes_no_questions: YesNoQuestions = opt(
        "yes-or-no", "yes-or-no = a short answer to a yes/no question (one that opens with an auxiliary verb, with no wh-word and no "
                "'or', not a request: rag_pipeline.answer.polar) opens with Yes or No, whichever the model ranks higher less "
                "its lean measured by calibrate --task yes-no (free decoding; grounded decoding copies spans), and a "
                "threshold calibrated on no yes/no question does not withhold it; free = the model's own opening")
    answer_check: AnswerCheck = opt(
        "grounded", "an answer with no content word (\"The [1]\") or whose cited passage lacks most of its words "
                    "(rag_pipeline.answer.check.answer_problem) is never shown: grounded = decode it again grounded (a span of a "
                    "shown passage) and abstain if that fails the check too; abstain = abstain at once; off = show it")
    reread: Reread = opt(
        "relevant", "relevant = a short answer that cites only passages holding fewer of the question's content words than "
                    "another shown passage (the model read the wrong one: rag_pipeline.answer.check.misread) is answered again "
                    "from the shown passages holding the most, its citations numbered as first shown; where answers are handed "
                    "on whole (calibrated or checked). Reference adapter, Disfl-QA test split: citation precision 91.7 "
                    "against 89.1, overall F1 39.2 against 38.4 (docs/results.md, 'Reading the passage about the question'); "
                    "off = the first answer stands")
    device: str = opt("auto", "auto (CUDA if present), cpu, cuda or cuda:N")
    dtype: Dtype = opt("auto", "generator weights (a LoRA adapter is merged into them): auto = bfloat16 on bf16 GPUs and "
                               "AVX512-BF16/AMX CPUs, else float32")
    kernels: Kernels = opt("fast", "on a CPU, fast = bf16 weights prepacked for oneDNN and sibling projections fused "
                                   "(rag_pipeline.inference: bitwise the same logits) and decoding into a preallocated key/value "
                                   "cache (about 1.5x faster decoding; its masked attention changes bf16 logits in the last bits, "
                                   "so a near tie can decode otherwise); plain = transformers as loaded (the reference path)")
    draft_tokens: int = opt(4, "with --kernels fast on a CPU, greedy answers (one question or a batch, and every answer of serve) "
                               "decode on rag_pipeline.batching's engine, each step also checking up to this many tokens guessed by "
                               "prompt lookup (what followed the answer's last words where they stand in the prompt): a copied span "
                               "takes one step, not one per token, each token chosen as one token a step would (10.1 against "
                               "27.7 ms a token in bench/bench_decode.py); 0 = generate's batched passes into a preallocated "
                               "cache (serve: its engine, one token a step)")
    batch_size: int = opt(8, "questions per generation batch")
    snippet: int = opt(160, "characters of each cited chunk shown with the answer")

    def __post_init__(self) -> None:
        if not self.index:
            raise ConfigError("index is empty: pass --index DIR (an index built with rag-pipeline build-index)")
        for name, low in _LOWEST:
            if getattr(self, name) < low:
                raise ConfigError(f"{name} is {getattr(self, name)}: it must be at least {low}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature is {self.temperature}: it must be positive (use greedy decoding, the default, for determinism)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p is {self.top_p}: it must be in (0, 1]")
        if not 0 <= self.min_score_words <= 1:
            raise ConfigError(f"min_score_words is {self.min_score_words}: it is a share of the question's words, use a value in [0, 1]")
        if not -1 <= self.min_score <= 1:
            raise ConfigError(f"min_score is {self.min_score}: it is a cosine similarity, use a value in [-1, 1] (-1 never abstains)")
        clash = "--grounded" if self.grounded else f"--abstention {self.abstention}" if self.abstention != "calibrated" else \
            f"--task {self.task}" if self.task != "qa" else ""
        if not math.isfinite(self.probe_bias):
            raise ConfigError(f"--probe-bias is {self.probe_bias}: give a finite number (0 keeps the probe's stored cutoff)")
        if self.probe_bias and not self.abstain_probe:
            raise ConfigError(f"--probe-bias {self.probe_bias} moves the answerability probe's cutoff: add --abstain-probe, or drop "
                              "--probe-bias")
        if self.orders == "both" and clash:
            raise ConfigError(f"--orders both compares the null margins of free short answers under the calibrated abstention, "
                              f"not with {clash}: drop one of the two")
        if self.abstain_probe and clash:
            raise ConfigError(f"--abstain-probe withholds free short answers beside the calibrated abstention, where its cutoff was "
                              f"chosen, not with {clash}: drop one of the two")
        if self.passages != "chunks" and self.candidates < self.k:
            raise ConfigError(f"candidates is {self.candidates}: --passages {self.passages} chooses k={self.k} passages from the top "
                              f"candidates, pass --candidates {self.k} or more (or a smaller -k)")
        if self.schema and self.task != "extract":
            raise ConfigError(f"--schema {self.schema} is for JSON answers: pass --task extract --schema {self.schema}")
        if self.task != "qa" and self.num_beams > 1:
            raise ConfigError(f"--task {self.task} is decoded greedily or sampled under its grammar, not with beam search: drop --num-beams")
        if self.task == "extract" and self.grounded:
            raise ConfigError("--task extract and --grounded were both given: a JSON answer's form is decoded under its schema; "
                              "drop --grounded")
        check_device(self.device)
        check_dtype(self.dtype)


@dataclass
class AnswerSettings(Answering):
    """Answering with one generator: what :meth:`~rag_pipeline.answer.ask.Pipeline.load` takes."""

    adapter: str = opt("", f"train-generator output directory; empty: {DEFAULT_ADAPTER}, else {REFERENCE_ADAPTER}, else the base model")
    no_adapter: bool = opt(False, "use the base generator without any adapter")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapter and self.no_adapter:
            raise ConfigError(f"--adapter {self.adapter} and --no-adapter contradict each other: pass one of them")
        if self.abstain_probe and self.no_adapter:
            raise ConfigError("--abstain-probe reads the adapter's answerability probe: pass --adapter, or drop --abstain-probe")
