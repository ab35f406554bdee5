"""An adapter directory's ``README.md``: its model card, written from its ``rag_pipeline.json``.

peft's ``save_pretrained`` leaves a template card in every adapter it saves ("[More Information Needed]", the base
model as a local cache path). :func:`~rag_pipeline.adapter_meta.write_adapter_meta` replaces it with this card each
time it writes the metadata (train-generator's adapters and snapshots, calibrate's abstention), so the card says what
the metadata says: the base model by its id, the method, the dataset and its fingerprint, the training run's figures,
each calibrated abstention and how to use the adapter. The card is a function of the metadata alone (no date, no
path), so the same run gives the same card. A ``README.md`` written by hand is kept: only a missing card, peft's
template or a card this module wrote is replaced.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag_pipeline.atomic import atomic_file

if TYPE_CHECKING:
    from rag_pipeline.adapter_meta import AdapterMeta

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
MARK = "<!-- written by rag-pipeline from rag_pipeline.json: a README.md without this line is kept as it is -->"
_PEFT_TEMPLATE = ("# Model Card for Model ID", "[More Information Needed]")  # both: a card filled in by hand is kept

# calibrate's result per decoding mode (rag_pipeline.answer.abstention.MODES, and yes_no): what each one decides
_MODES = {"free": "short answers", "grounded": "grounded short answers (--grounded)", "summary": "summaries (--task summary)*",
          "summary_grounded": "grounded summaries (--task summary --grounded)*", "extract": "JSON answers (--task extract)*",
          "yes_no": "yes/no questions (ask's --yes-no-questions yes-or-no, the default)"}


def replaceable(path: Path) -> bool:
    """Whether ``path`` may be (re)written as the card: absent, peft's template, or a card written here."""
    if not path.is_file():
        return True
    text = path.read_text(encoding="utf-8", errors="replace")
    return MARK in text or all(t in text for t in _PEFT_TEMPLATE)


def card_text(adapter_dir: str | Path, meta: AdapterMeta) -> str | None:
    """The card of ``meta`` for the directory, its LoRA settings read from the ``adapter_config.json`` there; None, with
    a warning, where metadata edited by hand cannot be rendered (a card never fails a save)."""
    try:
        path = Path(adapter_dir) / "adapter_config.json"
        lora = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return card(meta, lora if isinstance(lora, dict) else None)
    except Exception as e:  # noqa: BLE001 - documentation: the weights and rag_pipeline.json are what load
        log.warning("the model card of %s was not written (%s: %s): its rag_pipeline.json has a value of an unexpected type",
                    adapter_dir, type(e).__name__, e)
        return None


def write_card(adapter_dir: str | Path, text: str | None) -> None:
    """Write ``text`` (:func:`card_text`) as the directory's ``README.md``, atomically, unless a hand-written one is there."""
    path = Path(adapter_dir) / CARD_FILE
    if text is not None and replaceable(path):
        with atomic_file(path) as f:
            f.write(text)


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if _real(x) else "-"


def _f1(x: Any) -> str:
    return f"{100 * x:.1f}" if _real(x) else "-"


def _num(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) and x == x else ("-" if x is None else str(x))


def _g(x: Any) -> str:
    return f"{x:g}" if _real(x) else "?"


def card(meta: AdapterMeta, lora: dict[str, Any] | None = None) -> str:
    """The model card of an adapter directory: front matter (base model id, library, tags), what it is, how to use
    it, its training run and its calibrated abstention, all read from ``meta``; the LoRA rank, alpha and modules from
    ``lora`` (the folder's ``adapter_config.json``: an ``--init-adapter`` run or a soup keeps other ones than its config's)."""
    cfg, metrics = meta.config or {}, meta.metrics or {}
    full = meta.method == "full"
    lora = lora or {"r": cfg.get("lora_r"), "lora_alpha": cfg.get("lora_alpha"), "target_modules": cfg.get("lora_target_modules")}
    modules = lora.get("target_modules")
    modules = ", ".join(sorted(map(str, modules))) if isinstance(modules, list) and modules else str(modules or "the default modules")
    what = ("A fully fine-tuned copy" if full else
            f"A {'QLoRA' if meta.method == 'qlora' else 'LoRA'} adapter (r {lora.get('r', '?')}, alpha {lora.get('lora_alpha', '?')}; "
            f"{modules})")
    lines = ["---", f"base_model: {meta.base_model}", f"library_name: {'transformers' if full else 'peft'}",
             f"pipeline_tag: {'text2text-generation' if meta.model_kind == 'seq2seq' else 'text-generation'}",
             "tags:", "- rag-pipeline", "- retrieval-augmented-generation", *([] if full else [f"- {meta.method}"]), "---", MARK, "",
             "# A rag-pipeline generator", "",
             f"{what} of `{meta.base_model}`, trained by `rag-pipeline train-generator` to answer a question from the "
             f"passages retrieved for it, citing them as [n] (prompt template `{meta.template or '?'}`, kept in "
             "`rag_pipeline.json`, which `ask` renders)."]
    soup = meta.extra.get("soup")
    if isinstance(soup, dict):
        lines += ["", f"It is a weight-space mix (soup) made by `scripts/soup_adapters.py`: {_g(soup.get('weight'))} of "
                      f"`{soup.get('first')}` and the rest of `{soup.get('second')}`, rank {soup.get('rank')}; the training run "
                      "below is the first one's."]
    if meta.snapshot_step is not None:
        lines += ["", f"This is a snapshot of a training run at optimizer step {meta.snapshot_step} "
                      f"({meta.train_examples_seen} examples seen), kept for learning curves."]
    lines += ["", "## Use", "", "```sh", 'rag-pipeline ask --adapter path/to/this/folder --index INDEX "your question"',
              "rag-pipeline serve --adapter path/to/this/folder --index INDEX      # OpenAI-compatible, with a web page",
              "rag-pipeline evaluate --adapter path/to/this/folder --index INDEX --qa QA",
              "rag-pipeline export --adapter path/to/this/folder --output OUT   # merged weights; --format gguf for llama.cpp", "```", ""]
    lines += _training(meta, cfg, metrics) + _abstention(meta.abstention or {})
    lines += ["## Files", "",
              "- `rag_pipeline.json`: what this card is written from (base model and weights hash, template, training "
              "config, dataset fingerprint, validation history, calibration); `ask`, `serve`, `evaluate` and `export` read it.",
              f"- {'`model.safetensors`: the weights' if full else '`adapter_model.safetensors`, `adapter_config.json`: the adapter (peft)'}; "
              "the tokenizer and chat template of the base model.",
              "- `loss_curve.png` (final adapters): training and validation loss.",
              "- `answerability_probe.json`, where `scripts/hidden_state_probe.py --save` stored one: what `--abstain-probe` reads.", ""]
    return "\n".join(lines)


def _training(meta: AdapterMeta, cfg: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    lines = ["## Training", "", "| | |", "| --- | --- |",
             f"| dataset | `{meta.dataset or '?'}` (fingerprint `{str(meta.dataset_fingerprint or '?')[:16]}`) |"]
    if meta.tasks:
        lines.append("| tasks | " + ", ".join(f"{k} {_g(v)}" for k, v in sorted(meta.tasks.items())) + " |")
    if cfg.get("init_adapter"):
        lines.append(f"| starting from | `{cfg['init_adapter']}` (its LoRA weights) |")
    length = f"{cfg['max_steps']} steps" if _real(cfg.get("max_steps")) and cfg["max_steps"] > 0 else f"{_g(cfg.get('epochs'))} epoch(s)"
    lines.append(f"| recipe | learning rate {_g(cfg.get('learning_rate'))}, {length}, batch {cfg.get('batch_size', '?')} x "
                 f"{cfg.get('grad_accum', '?')} accumulation, seed {cfg.get('seed', '?')} |")
    if metrics:
        hours = f"{metrics['train_seconds'] / 3600:.1f} h" if _real(metrics.get("train_seconds")) else "?"
        lines += [f"| steps | {metrics.get('steps')} of {metrics.get('total_steps')} ({metrics.get('status', '?')}) |",
                  f"| best checkpoint | step {metrics.get('best_step')} by {metrics.get('metric_for_best', 'val_loss')} |",
                  f"| time | {hours} on {metrics.get('device', '?')}{' (bf16)' if metrics.get('bf16') else ''}, "
                  f"{_num(metrics.get('train_examples_per_s'), 2)} examples/s |"]
    evals = [e for e in meta.evals or [] if isinstance(e, dict)]
    best = metrics.get("best_step", meta.snapshot_step)  # a snapshot's own step
    shown = [e for e in evals if e.get("step") in (0, best)] or evals[-1:]
    if shown:
        start = " (the starting adapter)" if cfg.get("init_adapter") else " (the base model)"
        lines += ["", f"Validation, measured by train-generator: the loss on {metrics.get('eval_examples', cfg.get('eval_subset', '?'))} "
                      f"prompts of the dataset's validation split, SQuAD 2.0 F1 on the first {cfg.get('eval_generate', '?')} short "
                      "answers among them (greedy, no abstention threshold):", "",
                  "| step | loss | F1 | HasAns F1 | NoAns acc. |", "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {e.get('step')}{start if e.get('step') == 0 else ''} | {_num(e.get('val_loss'))} | {_f1(e.get('f1'))} | "
                  f"{_f1(e.get('has_f1'))} | {_pct(e.get('noans_acc'))} |" for e in shown]
    lines += ["", "Reproduce it with `rag-pipeline train-generator --config CONFIG`, CONFIG holding `rag_pipeline.json`'s "
                  "`config`, on the dataset of that fingerprint.", ""]
    return lines


def _abstention(abstention: dict[str, Any]) -> list[str]:
    records = {m: r for m, r in abstention.items() if isinstance(r, dict) and r}
    if not records:
        return ["## Abstention", "", "Not calibrated: `rag-pipeline calibrate --adapter path/to/this/folder --index INDEX --qa DEV` "
                                     "chooses the null margin's threshold on a dev split; without one `ask` answers greedily.", ""]
    lines = ["## Calibrated abstention", "", "Chosen by `rag-pipeline calibrate` on a dev split; `ask` and `serve` apply the "
                                             "threshold of the mode they answer in.", "",
             "| mode | dev questions | threshold | HasAns F1 | NoAns acc. | false abstentions | ROC AUC |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    polar = {m: r for m, r in records.items() if "threshold" not in r and "accuracy" in r}  # calibrate --task yes-no
    for mode, r in sorted(records.items()):
        if mode not in polar:
            lines.append(f"| {_MODES.get(mode, mode)} | {r.get('questions', '-')} of `{r.get('qa', '?')}` | {_num(r.get('threshold'))} | "
                         f"{_f1(r.get('has_f1'))} | {_pct(r.get('noans_acc'))} | {_pct(r.get('false_abstain_rate'))} | "
                         f"{_num(r.get('roc_auc'))} |")
    if any(_MODES.get(m, "").endswith("*") for m in records):
        lines += ["", "*: HasAns F1 is the answer field's F1 for JSON answers; a summary scores 1 where it holds a gold answer."]
    for mode, r in sorted(polar.items()):
        lines += ["", f"{_MODES.get(mode, mode).capitalize()}: bias {_num(r.get('bias'))} on the yes-minus-no score, accuracy "
                      f"{_pct(r.get('accuracy'))} on {r.get('questions', '-')} questions of `{r.get('qa', '?')}` "
                      f"({_pct(r.get('accuracy_at_zero'))} without the bias)."]
    return lines + [""]
