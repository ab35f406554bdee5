"""Yes/no questions answered yes or no.

A question that opens with an auxiliary verb ("Did he win?", "Is the tower in Paris?"), holds no
wh-word and offers no alternative ("... or ...") asks for a polarity (:func:`is_polar`). Left to
itself a small tuned reader often answers one with a span of the passage ("the race [1]") or
refuses; with ``yes_no_questions: yes-or-no`` (:class:`rag_pipeline.answer.settings.Answering`)
its answer must open with "Yes" or "No" (:class:`PolarStart`), whichever the model ranks higher
less its calibrated lean (``calibrate --task yes-no``), and goes on freely after it ("Yes [1]",
"No, it was not [2]"). With beam search the beams choose between the two words and the lean
does not apply.

Whether to answer at all is decided as for any question, but for one exception (the end of this paragraph). With a calibrated abstention the
question is answered first as the model likes, with its null margin, and then decoded again
opening with Yes or No; the threshold decides on the first answer's margin (the margin of a
forced opening would be no measure of answerability: the model's probability of "Yes" is low
where it would rather quote a span), and a withheld answer keeps the second decode in ``raw``. A
threshold chosen on validation questions none of which was a yes/no question (the calibration's
``yes_no_questions`` 0) does not withhold a yes/no answer (:func:`rag_pipeline.answer.abstention.withhold`).
With greedy abstention the refusal's opening stays allowed beside Yes and No, in one decode. The answer check passes yes/no answers
to questions that may be answered so (:func:`may_be_yes_no`, :func:`rag_pipeline.answer.check.answer_problem`); grounded decoding copies spans and is left as it is.
"""

from __future__ import annotations

import re
from typing import Any

from rag_pipeline.answer.grounded import token_pieces

AUXILIARIES = frozenset(
    "is are was were am do does did can could will would shall should may might must has have had "
    "isn't aren't wasn't weren't don't doesn't didn't can't couldn't won't wouldn't shouldn't hasn't haven't hadn't".split())
_WH = re.compile(r"\b(what|who|whom|whose|when|where|which|why|how)\b", re.IGNORECASE)
_ALTERNATIVE = re.compile(r"\bor\b", re.IGNORECASE)
# "Can you name the ship?", "May I know who...": a request, not a yes/no question
_REQUEST = re.compile(r"^\W*\w+\s+(you|i)\s+(please\s+)?(name|tell|list|give|describe|explain|say|find|show|know|identify|mention)\b",
                      re.IGNORECASE)
_POLAR_WORDS = ("yes", "no")


def is_polar(question: str) -> bool:
    """Whether ``question`` asks for yes or no: its first word (after an opening quote or bracket) is an
    auxiliary verb, and it has no wh-word, no "or" ("Was it red or blue?" asks for one of two) and is
    not a request ("Can you name the ship?")."""
    words = question.strip().lstrip("\"'\u201c\u2018([").split(maxsplit=1)
    if not words or words[0].lower().strip(",").replace("\u2019", "'") not in AUXILIARIES:
        return False
    return may_be_yes_no(question)


def may_be_yes_no(question: str) -> bool:
    """Whether "Yes" or "No" may answer ``question``: it holds no wh-word, offers no alternative and is not a request
    (an opening auxiliary is not needed: "He won the race?" may be answered yes). The answer check shows a yes/no
    answer whatever its words only then (:func:`rag_pipeline.answer.check.answer_problem`)."""
    return not _WH.search(question) and not _ALTERNATIVE.search(question) and not _REQUEST.search(question)


def polar_openings(tokenizer: Any) -> dict[str, Any]:
    """The tokens that read "yes" or "no" whatever their case and leading space ("Yes", " no", "NO") in
    ``tokenizer``'s vocabulary: ``{"yes": ids, "no": ids, "mask": boolean mask of both}``; found once per tokenizer."""
    import numpy as np

    cached = getattr(tokenizer, "_rag_polar_openings", None)
    if cached is None:
        pieces = token_pieces(tokenizer)
        words = [p.strip().lower() for p in pieces]
        cached = {w: np.array([i for i, p in enumerate(words) if p == w], dtype=np.int64) for w in _POLAR_WORDS}
        cached["mask"] = np.isin(np.arange(len(words)), np.concatenate([cached[w] for w in _POLAR_WORDS]))
        # what may follow the word: a token that does not glue onto it ("No" + "ah" reads "Noah")
        cached["apart"] = np.array([not p[:1].isalnum() for p in pieces], dtype=bool)
        tokenizer._rag_polar_openings = cached
    return cached


def usable(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` has a token that reads "yes" and one that reads "no" (:func:`polar_openings`): without
    both, the opening could not choose, and answers open as the model likes."""
    ids = polar_openings(tokenizer)
    return bool(len(ids["yes"]) and len(ids["no"]))


def polar_score(logprobs: Any, tokenizer: Any) -> float:
    """``log P(a "yes" opening) - log P(a "no" opening)`` from the answer's first-token log-probabilities (or logits)
    ``logprobs`` (a torch vector over the vocabulary): above the calibrated ``yes_no_bias`` the answer is yes."""
    import torch

    ids = polar_openings(tokenizer)
    yes, no = (torch.as_tensor(ids[w], device=logprobs.device) for w in _POLAR_WORDS)
    return float(torch.logsumexp(logprobs[yes].float(), 0) - torch.logsumexp(logprobs[no].float(), 0))


class PolarStart:
    """A token constraint (the ``allowed_mask`` interface of :class:`rag_pipeline.generator.ConstrainedLogits`):
    the answer's first token is "Yes" or "No" (:func:`polar_openings`) or one of ``also`` (a refusal's
    opening, where the model may still refuse); the second token may not glue onto the word ("No" + "ah"), and
    every token after it is allowed. With the first token's
    scores in hand (:meth:`adjust`), only the side that wins is kept: yes where :func:`polar_score` is above
    ``bias`` (the model's lean towards one word, measured by ``rag-pipeline calibrate`` on written yes/no
    questions, half of each), else no."""

    def __init__(self, tokenizer: Any, also: tuple[int, ...] | list[int] = (), bias: float = 0.0) -> None:
        import numpy as np

        if not usable(tokenizer):
            raise ValueError("the tokenizer lacks a token that reads 'yes' or one that reads 'no'")
        self.tokenizer, self.bias = tokenizer, bias
        ids = polar_openings(tokenizer)
        self.first = ids["mask"].copy()
        self.first[list(also)] = True
        self.also = frozenset(also)
        self.second = ids["apart"]
        self.rest = np.ones_like(self.first)
        self._lists: dict[int, list[int]] = {}

    def allowed_mask(self, generated: list[int] | tuple[int, ...]) -> Any:
        if not len(generated):
            return self.first
        return self.second if len(generated) == 1 and generated[0] not in self.also else self.rest

    def allowed(self, generated: list[int] | tuple[int, ...]) -> list[int]:
        """:meth:`allowed_mask` as a list of ids (beam search), each of the three lists made once."""
        import numpy as np

        mask = self.allowed_mask(generated)
        if id(mask) not in self._lists:
            self._lists[id(mask)] = np.flatnonzero(mask).tolist()
        return self._lists[id(mask)]

    def adjust(self, generated: list[int] | tuple[int, ...], scores: Any) -> Any:
        """The first token's ``scores`` (one row, already masked) with the losing polar word's tokens removed."""
        import torch

        if len(generated):
            return scores
        lose = "no" if polar_score(scores, self.tokenizer) > self.bias else "yes"
        out = scores.clone()
        out[torch.as_tensor(polar_openings(self.tokenizer)[lose], device=scores.device)] = -torch.inf
        return out


def constraints(tokenizer: Any, questions: list[str], also: tuple[int, ...] | list[int] = (),
                bias: float = 0.0) -> list[PolarStart | None] | None:
    """One constraint per question (:class:`PolarStart`, with ``also`` and ``bias``, for a yes/no one; None for
    the others), or None when none of them is a yes/no question or the tokenizer cannot spell the opening
    (:func:`usable`; a small test vocabulary): the answers then open as the model likes."""
    polar = [is_polar(q) for q in questions]
    if not any(polar) or not usable(tokenizer):
        return None
    start = PolarStart(tokenizer, also, bias)
    return [start if p else None for p in polar]
