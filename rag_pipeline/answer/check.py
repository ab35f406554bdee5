"""The answer check: whether a generated answer may be shown as an answer.

``ask`` (``--answer-check``, :class:`rag_pipeline.answer.settings.Answering`) and ``evaluate``
refuse an answer that holds no content word ("The [1]") or whose cited passages lack most of
its content words (:func:`answer_problem`); ``ask`` then decodes it again grounded, or abstains.
An answer that cites a passage holding fewer of the question's content words than another shown
passage (:func:`misread`) is answered again from that one (``--reread``).
Content words are :func:`rag_pipeline.support.content_tokens`.
"""

from __future__ import annotations

from rag_pipeline.metrics import extract_answer, polarity
from rag_pipeline.support import content_tokens

# An answer is shown only when its passage holds at least this share of its content words.
ANSWER_SUPPORT = 0.5
# The subjects of the tuned model's refusals ("The papers don't contain the answer."): where the
# refusal was ruled out, the answer stops after them ("The papers [2]"), so they are not content.
REFUSAL_SUBJECTS = frozenset(content_tokens(
    "documents papers processes manuscripts contents documentation texts passages context sources articles materials records"))


def answer_problem(answer: str, passages: list[str], *, yes_no: bool) -> str | None:
    """Why a generated answer must not be shown as an answer, or None when it may be.

    ``"no_content"``: it holds no content word ("The [1]") other than a refusal's subject (:data:`REFUSAL_SUBJECTS`:
    "The processes [1]", "The papers [2]"); ``"unsupported"``: fewer than :data:`ANSWER_SUPPORT` of its content words
    are in ``passages`` (the passages it cites; the caller passes all shown ones when it cites
    none). A yes/no answer ("Yes [1]", "No, it was not.") is an answer whatever its words where ``yes_no``: the
    question may be answered yes or no (:func:`rag_pipeline.answer.polar.may_be_yes_no`; "no [2]" answers no "How
    much ...?"), else its words are checked as any answer's.
    """
    text = extract_answer(answer)
    if yes_no and polarity(text) is not None:
        return None
    need = content_tokens(text)
    if not need - REFUSAL_SUBJECTS:
        return "no_content"
    have = frozenset().union(*(content_tokens(p) for p in passages)) if passages else frozenset()
    return "unsupported" if len(need & have) / len(need) < ANSWER_SUPPORT else None


def cited_problem(answer: str, cited: list[int], shown: list[str], yes_no: bool) -> str | None:
    """:func:`answer_problem` on the passages an answer cites (1-based numbers into ``shown``), or on every shown
    passage when it cites none: the rule ask applies, and evaluate and calibrate score. ``yes_no``: the question may be
    answered yes or no (:func:`rag_pipeline.answer.polar.may_be_yes_no`)."""
    passages = [shown[n - 1] for n in cited if 1 <= n <= len(shown)]
    return answer_problem(answer, passages or shown, yes_no=yes_no)


def misread(question: str, shown: list[str], cited: list[int]) -> list[int] | None:
    """The shown passages (0-based, in prompt order) that hold the most of ``question``'s content words, where an answer
    citing ``cited`` (1-based numbers into ``shown``) cites only passages holding fewer: the model read a passage less
    about the question than another it was shown (ask's ``reread`` answers again from those). None where it cites one of
    them, cites nothing, or no shown passage holds a word of the question."""
    need = content_tokens(question)
    numbers = [n for n in cited if 1 <= n <= len(shown)]
    if not need or not numbers or len(shown) < 2:
        return None
    held = [len(need & content_tokens(t)) for t in shown]
    most = max(held)
    if most == 0 or max(held[n - 1] for n in numbers) >= most:
        return None
    return [i for i, h in enumerate(held) if h == most]
