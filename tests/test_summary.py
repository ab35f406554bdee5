"""Summaries: the grammar allows exactly cited sentences, and their citations are judged as ALCE does, on hand-computed cases."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag_pipeline.answer import summary  # noqa: E402
from rag_pipeline.prompt import ABSTAIN  # noqa: E402

PASSAGES = ["The Normans came from Normandy in northern France.", "The Normans spoke Old Norman, a dialect of French."]


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    from rag_pipeline.model_paths import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")))


def _walk(tok, n_docs: int, text: str) -> bool:
    """Whether ``text`` then EOS can be decoded under a summary constraint of ``n_docs`` passages."""
    c = summary.constraint(tok, n_docs)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return all(t in c.allowed(ids[:i]) for i, t in enumerate(ids))


@pytest.mark.parametrize("text", ["The Normans came from Normandy [1].", "They spoke French [2] [1]. They came from Normandy [1].",
                                  ABSTAIN, "A dialect of French was spoken [2]. It came from Norse [2]. They lived in France [1]. "
                                           "Normandy is in the north [1]."])
def test_cited_sentences_and_the_abstention_can_be_decoded(smol_tok, text: str) -> None:
    assert _walk(smol_tok, 2, text)


@pytest.mark.parametrize("text", ["The Normans came from Normandy.", "The Normans came from Normandy [3].", "The Normans [1]",
                                  "The Normans came from Normandy [1]. And more", "A [1]. B [1]. C [1]. D [1]. E [1].",
                                  "They spoke French [1] [2] [1]."])
def test_uncited_sentences_unknown_passages_and_trailing_text_cannot(smol_tok, text: str) -> None:
    assert not _walk(smol_tok, 2, text)


def test_sentences_are_split_with_their_citations() -> None:
    assert summary.sentences_of("The Normans came from Normandy [1]. They spoke French [2] [1]. Cut off here") == [
        ("The Normans came from Normandy", [1]), ("They spoke French", [2, 1])]
    assert summary.sentences_of(ABSTAIN) == []


def test_citation_recall_and_precision_on_hand_computed_cases() -> None:
    checked = summary.citation_quality([
        ("The Normans came from Normandy", [1]),          # supported by [1]: recall 1, [1] precise
        ("The Normans spoke Old Norman", [1, 2]),         # supported by [1]+[2]; [2] alone supports, [1] alone does not and is not needed
        ("The Normans built castles in England", [2]),    # 1 of 4 content words in [2] (normans): unsupported, [2] imprecise
        ("Normandy Normans French dialect", [1, 2]),      # each alone holds 3 of its 4 content words: both precise
        ("Old Norman", [3]),                              # a passage that was not shown: unsupported, imprecise
    ], PASSAGES)
    assert [s["supported"] for s in checked] == [True, True, False, True, False]
    assert [s["precise"] for s in checked] == [[True], [False, True], [False], [True, True], [False]]
    recall, precision = summary.citation_scores(checked)
    assert recall == pytest.approx(3 / 5) and precision == pytest.approx(4 / 7)
    assert summary.citation_scores([]) == (None, None)


def test_what_the_token_limit_left_whole() -> None:
    two = "The Normans came from Normandy [1]. Rollo led them [2]."
    assert summary.complete_part(two) == two
    assert summary.complete_part(two + " Their duke wa") == two  # the cut sentence is left out
    assert summary.complete_part("The Normans came from Norm") == ""
