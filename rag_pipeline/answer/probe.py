"""An answerability probe: a linear read-out of the tuned generator's hidden state that withholds an answer.

The null margin (:mod:`rag_pipeline.answer.abstention`) ranks Disfl-QA's unanswerable questions barely above
chance (ROC AUC 0.58 on the test split). The generator's hidden state holds more: a logistic regression on its
*readings* (each a decoder layer and a pooling: ``last``, the state at the prompt's last token; ``question``, the
mean of the states from the question's first token to the prompt's end), fitted on the 6,323 training questions
whose answerability is known, ranks them at 0.72 with layer 18 read both ways (0.67 with its last token alone), and
withholding an answer when the probe *or* the margin says so raises overall F1 (``docs/results.md``,
"Answerability probe"). ``scripts/hidden_state_probe.py --save`` fits one for an adapter and
stores it beside the weights, in :data:`FILE`; ``ask --abstain-probe`` (and ``evaluate``, ``serve``) reads it.

The probe reads the prompt, not the answer: a held question is never generated (``abstain_reason`` ``"probe"``).
It applies to short answers decoded free under a calibrated abstention, the setting its cutoff was chosen in.
Like the margin's threshold it was measured on the questions it was fitted on: the file records how many of
those were yes/no questions, and a probe fitted on none does not hold one whose answer opens with yes or no.
It is tied to what it was chosen with: the weights it read (their SHA-256) and the margin's threshold beside which its
cutoff was chosen; a probe whose weights or threshold changed is refused. (The states it was fitted on were read in
the dtype ``ask`` chooses by default; another ``--dtype`` reads slightly different ones.)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_pipeline.errors import ConfigError

FILE = "answerability_probe.json"
FORMAT = 2  # format 1: one reading, {"layer": L}, read as ((L, "last"),)
REFIT = "fit it again with scripts/hidden_state_probe.py --save"
POOLS = ("last", "question")  # the prompt's last token; the mean from the question's first token to the prompt's end
Reading = tuple[int, str]  # (decoder layer, 0: the embeddings; pool)


def parse_readings(text: str) -> tuple[Reading, ...]:
    """``"18:last,18:question"`` as readings; ValueError naming what is wrong."""
    out = []
    for part in text.split(","):
        layer, _, pool = part.strip().partition(":")
        if not layer.strip().isdigit() or pool.strip() not in POOLS:
            raise ValueError(f"reading {part.strip()!r} is not LAYER:POOL with POOL one of {', '.join(POOLS)} (e.g. 18:question)")
        out.append((int(layer), pool.strip()))
    if len(set(out)) != len(out):
        raise ValueError(f"readings {text!r} name one reading twice")
    return tuple(out)


def pooled(readings: tuple[Reading, ...]) -> bool:
    """Whether a reading needs the question's place in the prompt (a ``question`` pool)."""
    return any(pool == "question" for _, pool in readings)


def describe(readings: tuple[Reading, ...]) -> str:
    """``"18:last,18:question"``: the form :func:`parse_readings` reads."""
    return ",".join(f"{layer}:{pool}" for layer, pool in readings)


@dataclass(frozen=True)
class Probe:
    """``score(state) = ((state - mean) / scale) . coef + intercept``; a question is held when its score is above ``cutoff``.
    ``state`` is the readings' vectors, each of the model's hidden size, one after the other."""

    readings: tuple[Reading, ...]  # (layer, pool) each: the hidden state after that decoder layer, pooled so
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    cutoff: float
    yes_no_questions: int  # of the questions it was fitted on and its cutoff chosen on
    weights_sha256: str  # of the adapter's adapter_model.safetensors it read
    margin_threshold: float  # the adapter's free-decoding threshold its cutoff was chosen beside ("the probe or the margin")

    def score(self, state: Any) -> float:
        """The probe's score of one state (the readings' vectors, concatenated)."""
        x = np.asarray(state, dtype=np.float64)
        return float(((x - self.mean) / self.scale) @ self.coef + self.intercept)

    def to_json(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """The file's content: the probe and what it was fitted and chosen on (``provenance``)."""
        return {"format": FORMAT, "readings": [{"layer": layer, "pool": pool} for layer, pool in self.readings],
                "cutoff": self.cutoff, "intercept": self.intercept,
                "yes_no_questions": self.yes_no_questions, "weights_sha256": self.weights_sha256,
                "margin_threshold": self.margin_threshold,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(), **provenance}


def weights_sha256(adapter: str | Path) -> str:
    """SHA-256 of the adapter's weights file."""
    h = hashlib.sha256()
    with (Path(adapter) / "adapter_model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(adapter: str | Path) -> Probe:
    """The probe stored in ``adapter``, checked against its file's format and the adapter's weights (no model needed:
    ``ask`` and ``serve`` read it before loading one).

    Raises:
        ConfigError: no probe there, an unreadable one, a non-finite value, or one fitted on other weights.
    """
    path = Path(adapter) / FILE
    if not path.is_file():
        raise ConfigError(f"--abstain-probe needs {path}, which does not exist: fit one with scripts/hidden_state_probe.py "
                          f"--adapter {adapter} --save and its evaluate runs (docs/results.md, 'Answerability probe'), or drop "
                          f"--abstain-probe")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or d.get("format") not in (1, FORMAT):
            raise ValueError(f"format {d.get('format') if isinstance(d, dict) else None!r}, not 1 or {FORMAT}")
        readings = ((d["layer"], "last"),) if d["format"] == 1 else tuple((r["layer"], r["pool"]) for r in d["readings"])
        if not readings or len(set(readings)) != len(readings) or \
                any(type(layer) is not int or pool not in POOLS for layer, pool in readings):
            raise ValueError(f"readings must be distinct {{layer, pool}}, an integer layer and a pool of {', '.join(POOLS)}")
        p = Probe(readings, np.array(d["mean"], dtype=np.float64), np.array(d["scale"], dtype=np.float64),
                  np.array(d["coef"], dtype=np.float64), float(d["intercept"]), float(d["cutoff"]), int(d["yes_no_questions"]),
                  str(d["weights_sha256"]), float(d["margin_threshold"]))
        if not (p.mean.ndim == p.scale.ndim == p.coef.ndim == 1):
            raise ValueError("mean, scale and coef must be lists of numbers")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not an answerability probe ({e}): {REFIT}") from None
    finite = all(np.all(np.isfinite(v)) for v in (p.mean, p.scale, p.coef)) and all(map(math.isfinite, (p.intercept, p.cutoff)))
    if not finite or not np.all(p.scale > 0):
        raise ConfigError(f"{path} holds a non-finite weight or cutoff, or a scale that is not positive: {REFIT}")
    if p.weights_sha256 != weights_sha256(adapter):
        raise ConfigError(f"{path} was fitted on other weights than {Path(adapter) / 'adapter_model.safetensors'}: {REFIT}")
    return p


def check(p: Probe, adapter: str | Path, kind: str, hidden_size: int, layers: int, threshold: float | None) -> None:
    """That the loaded generator and the adapter's calibration are what ``p`` was fitted and chosen with.

    Raises:
        ConfigError: a seq2seq generator, another hidden size or fewer layers, no calibrated free-decoding threshold,
            or another threshold than the one its cutoff was chosen beside (``calibrate`` ran again).
    """
    path = Path(adapter) / FILE
    if kind != "causal":
        raise ConfigError(f"{path}: the answerability probe reads a causal generator's prompt, this one is {kind}: drop --abstain-probe")
    size = hidden_size * len(p.readings)
    if not (p.mean.shape == p.scale.shape == p.coef.shape == (size,)) or not all(0 <= layer <= layers for layer, _ in p.readings):
        raise ConfigError(f"{path} reads a state of size {p.coef.shape[0]} from {describe(p.readings)} (layer:pool); this model's "
                          f"{len(p.readings)} such readings are of size {size}, from {layers} layers: {REFIT}")
    if threshold is None:
        raise ConfigError(f"{path} withholds beside the adapter's calibrated abstention, which {adapter} does not have for free "
                          f"short answers: run rag-pipeline calibrate --adapter {adapter}, then {REFIT}")
    if not math.isclose(threshold, p.margin_threshold, rel_tol=0, abs_tol=1e-9):
        raise ConfigError(f"{path}'s cutoff was chosen beside the margin threshold {p.margin_threshold:.4f}; the adapter's is now "
                          f"{threshold:.4f} (calibrate ran again): {REFIT}")
