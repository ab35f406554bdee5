"""The calibrated abstention as answering applies it: the stored threshold and the rule.

``rag-pipeline calibrate`` (:mod:`rag_pipeline.eval.calibrate`) chooses a threshold on the null
margin (``log P(ABSTAIN) - log P(best answer)``) and stores it in the adapter's
``rag_pipeline.json`` under ``abstention``, one entry per decoding mode, written with
:func:`to_json`. ``ask``, ``evaluate`` and ``serve`` read it back (:func:`abstention_of`, through
:func:`from_json`) and withhold an answer whose margin is above it (:func:`withhold`). The format
lives here, with its reader, so that answering never imports the calibrate stage that writes it.
"""

from __future__ import annotations

import math
from typing import Any

from rag_pipeline.answer.settings import AnswerSettings
from rag_pipeline.errors import ConfigError


MODES = ("free", "grounded", "summary", "summary_grounded", "extract")
# Stored beside the modes, not one of them: how a yes/no answer's opening is chosen (``calibrate --task yes-no``).
YES_NO = "yes_no"


def mode_of(task: str, grounded: bool) -> str:
    """The decoding mode a calibration is stored under: a short answer's ``free`` or ``grounded``, a cited
    summary's ``summary`` or ``summary_grounded``, a JSON answer's ``extract`` (never grounded; the calibration
    records the schema it was made under)."""
    if task == "extract":
        return "extract"
    if task == "summary":
        return "summary_grounded" if grounded else "summary"
    return "grounded" if grounded else "free"


def applied(stored: dict[str, dict[str, Any]], task: str, grounded: bool, schema: str | None = None) -> dict[str, Any] | None:
    """The calibration in ``stored`` (mode -> calibration) that a ``task`` answer decoded ``grounded`` or not gets; None
    where none was stored for that mode. A JSON answer's applies only under the schema it was made with (``schema``:
    the answer's, canonical): another schema has another null object and other margins."""
    found = stored.get(mode_of(task, grounded))
    if task == "extract" and found is not None and found.get("schema") != schema:
        return None
    return found


def withhold(margin: float | None, abstention: dict[str, Any] | None, bias: float = 0.0, yes_no: bool = False) -> bool:
    """Whether the calibrated rule withholds an answer: ``margin > threshold + bias``.

    A positive ``bias`` answers more (fewer abstentions), a negative one abstains more. Without a
    stored calibration (or a margin) nothing is withheld by this rule. ``yes_no``: the answer opens with
    yes or no (:mod:`rag_pipeline.answer.polar`); a threshold chosen on validation questions none of
    which was a yes/no question (``yes_no_questions`` 0 in the calibration) does not withhold it, as it
    was never measured on one. Calibrations that do not record the count apply to every answer.
    """
    if margin is None or not abstention:
        return False
    if unmeasured_yes_no(abstention.get("yes_no_questions"), yes_no):
        return False
    return margin > float(abstention["threshold"]) + bias


def unmeasured_yes_no(measured: int | None, yes_no: bool) -> bool:
    """Whether a rule chosen on ``measured`` yes/no questions (None: not recorded) leaves alone an answer that opens with
    yes or no (``yes_no``): it does when it was measured on none (the margin's threshold, the answerability probe)."""
    return yes_no and measured == 0


def to_json(row: dict[str, float]) -> dict[str, Any]:
    """A sweep row with infinities written as strings JSON can hold."""
    return {k: (("inf" if v > 0 else "-inf") if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}


def from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_json` for the threshold."""
    t = obj["threshold"]
    return {**obj, "threshold": float(t) if not isinstance(t, str) else (math.inf if t == "inf" else -math.inf)}


def abstention_of(recorded: dict[str, dict[str, Any]] | None, cfg: AnswerSettings, schema: str | None = None) -> dict[str, dict[str, Any]]:
    """The adapter's calibrated abstentions by decoding mode (``rag-pipeline calibrate``); empty to decode greedily.

    ``recorded``: the adapter's :attr:`~rag_pipeline.adapter_meta.AdapterMeta.abstention` (None: never calibrated).
    ``schema``: with ``--task extract``, the answers' JSON schema (canonical): a calibration made under another
    schema does not apply (:func:`applied`), so it does not stop sampling either.

    Raises:
        ConfigError: a calibrated abstention applies and ``cfg`` samples or searches beams.
    """
    stored = {mode: from_json(c) for mode, c in (recorded or {}).items() if c and mode != YES_NO}
    if cfg.abstention != "calibrated" or not stored:
        return {}
    if applied(stored, cfg.task, cfg.grounded, schema) and (cfg.do_sample or cfg.num_beams > 1):  # another task's threshold does not stop them
        raise ConfigError("a calibrated abstention scores greedy answers: drop --do-sample/--num-beams, or pass --abstention greedy")
    return stored


def surer_order(first: float, other: float) -> tuple[bool, float]:
    """``--orders both`` from the null margins of one answer decoded with its passages in two orders: whether the
    ``other`` order's answer is the one shown (its margin is the lower: the model is surer of it), and the margin the
    threshold judges, the mean of the two (two readings of what the threshold was calibrated on)."""
    return other < first, (first + other) / 2


def check_orders(cfg: AnswerSettings, recorded: dict[str, dict[str, Any]] | None, generator: str) -> None:
    """ConfigError when ``--orders both`` is asked of a ``generator`` (a line naming it) whose adapter's ``recorded``
    abstentions hold no calibrated threshold for free short answers, which both orders' margins are judged by."""
    if cfg.orders == "both" and applied(abstention_of(recorded, cfg), "qa", False) is None:
        raise ConfigError(f"--orders both keeps the answer of the order with the lower null margin, and the {generator} has "
                          "no calibrated threshold for free short answers: run rag-pipeline calibrate on it, or drop --orders both")


def stored_yes_no_bias(recorded: dict[str, dict[str, Any]] | None) -> float:
    """The adapter's calibrated lean between "yes" and "no" (:class:`rag_pipeline.answer.polar.PolarStart`'s ``bias``,
    stored by ``rag-pipeline calibrate --task yes-no``); 0 where none was stored."""
    return float(((recorded or {}).get(YES_NO) or {}).get("bias", 0.0))
