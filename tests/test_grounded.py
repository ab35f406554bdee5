"""Grounded decoding: the automaton allows exactly document spans + their citation, or the abstention."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE

from rag_pipeline.answer.grounded import GroundedConstraint, token_bytes  # noqa: E402
from rag_pipeline.prompt import ABSTAIN  # noqa: E402

try:
    from tests.tiny_models import build_tiny_llama, build_tiny_tokenizer
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_tokenizer  # type: ignore[no-redef]

DOCS = ["The owl near the river is purple. It sleeps by day.", "Lysozyme and phospholipase A2 are enzymes in saliva."]


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    from rag_pipeline.model_paths import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")))


def _walk(c: GroundedConstraint, ids: list[int]) -> bool:
    """Whether every token of ``ids`` was allowed at its step."""
    return all(t in c.allowed(ids[:i]) for i, t in enumerate(ids))


def test_token_bytes_round_trip_the_vocabulary(smol_tok) -> None:
    tb = token_bytes(smol_tok)
    ids = smol_tok("naïve café, 2 °C", add_special_tokens=False)["input_ids"]
    assert b"".join(tb[i] for i in ids).decode() == "naïve café, 2 °C"
    assert tb[smol_tok.eos_token_id] is None  # special tokens are never copied


@pytest.mark.parametrize("answer, n", [("Lysozyme and phospholipase A2", 2), ("phospholipase", 2), ("purple", 1), ("owl near the river", 1)])
def test_spans_with_their_own_citation_are_allowed(smol_tok, answer: str, n: int) -> None:
    c = GroundedConstraint(smol_tok, DOCS)
    # the answer tokenized on its own (as training targets are), then the citation and EOS
    ids = smol_tok(f"{answer} [{n}]", add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
    assert _walk(c, ids)
    assert c.allowed(ids) == [smol_tok.eos_token_id]


@pytest.mark.parametrize("text", ["lysozyme [1]", "purple [2]", "green [1]", "purp [1]", "Paris", "saliva enzymes [2]",
                                  "The [1]", "It [1]", "the [1]", "by [1]"])
def test_unsupported_words_wrong_citations_cut_words_and_spans_without_content_are_not(smol_tok, text: str) -> None:
    c = GroundedConstraint(smol_tok, DOCS)
    ids = smol_tok(text, add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
    assert not _walk(c, ids)


def test_a_refusal_subject_alone_is_no_answer_but_with_a_content_word_it_is(smol_tok) -> None:
    # "The papers [1]" is what a tuned model decodes where its refusal ("The papers don't contain ...") was ruled out
    c = GroundedConstraint(smol_tok, ["The papers were signed in Vienna in 1815."])
    assert not _walk(c, smol_tok("The papers [1]", add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id])
    assert _walk(c, smol_tok("The papers were signed in Vienna [1]", add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id])
    assert _walk(c, smol_tok("1815 [1]", add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id])


def test_a_no_span_answers_only_a_question_that_may_be_answered_yes_or_no(smol_tok) -> None:
    c = ["No one came to the meeting in 1815."]
    ids = smol_tok("No [1]", add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
    assert _walk(GroundedConstraint(smol_tok, c), ids)  # "Did anyone come?"
    assert not _walk(GroundedConstraint(smol_tok, c, yes_no=False), ids)  # "Who came?": "No" holds no content word
    assert _walk(GroundedConstraint(smol_tok, c, yes_no=False), smol_tok("1815 [1]", add_special_tokens=False)["input_ids"]
                 + [smol_tok.eos_token_id])


def test_the_abstention_is_allowed_and_can_be_turned_off(smol_tok) -> None:
    ids = smol_tok(ABSTAIN, add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
    assert _walk(GroundedConstraint(smol_tok, DOCS), ids)
    assert not _walk(GroundedConstraint(smol_tok, DOCS, abstain=False), ids)


def test_decoding_under_the_constraint_yields_only_grounded_answers(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    tok = build_tiny_tokenizer(chat=True)
    model = AutoModelForCausalLM.from_pretrained(str(build_tiny_llama(tmp_path / "llama")))
    docs = ["The cat near the river is red.", "The fox near the river is blue."]
    outs = set()
    for seed in range(6):
        torch.manual_seed(seed)
        c = GroundedConstraint(tok, docs)
        prompt = tok("Question: What colour is the fox?", return_tensors="pt")
        width = prompt["input_ids"].shape[1]
        out = model.generate(**prompt, max_new_tokens=24, do_sample=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             prefix_allowed_tokens_fn=lambda b, ids: c.allowed(ids[width:].tolist()))
        text = tok.decode(out[0, width:], skip_special_tokens=True).strip()
        outs.add(text)
        if text != ABSTAIN and out[0, -1] == tok.eos_token_id:  # finished: a span of doc n, then [n]
            span, cite = text.rsplit(" [", 1)
            n = int(cite.rstrip("]"))
            assert span.strip() in docs[n - 1], text
    assert len(outs) > 1  # sampling explored several grounded answers, not one forced string


# ------------------------------------------------------------------------------ grounded summaries


def _summary_ids(tok, text: str) -> list[int]:
    """A grounded summary's ids as the automaton spells it: each sentence's tokens, its citation, then "." on its own."""
    ids: list[int] = []
    for i, (span, n) in enumerate(text):
        ids += tok(("" if i == 0 else " ") + span, add_special_tokens=False)["input_ids"]
        ids += tok(f" [{n}]", add_special_tokens=False)["input_ids"] + tok(".", add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id]


def test_a_grounded_summary_copies_every_sentence_from_the_passage_it_cites(smol_tok) -> None:
    from rag_pipeline.answer.grounded import GroundedSummaryConstraint

    c = GroundedSummaryConstraint(smol_tok, DOCS, max_sentences=2)
    assert _walk(c, _summary_ids(smol_tok, [("The owl near the river is purple", 1), ("phospholipase A2 are enzymes in saliva", 2)]))
    assert _walk(c, _summary_ids(smol_tok, [("Lysozyme and phospholipase A2", 2)]))
    assert not _walk(c, _summary_ids(smol_tok, [("The owl near the river is purple", 2)]))  # cites a passage without it
    assert not _walk(c, _summary_ids(smol_tok, [("The owl is purple", 1)]))  # not a span
    assert not _walk(c, _summary_ids(smol_tok, [("purple", 1), ("It sleeps by day", 1), ("saliva", 2)]))  # more than 2 sentences
    assert not _walk(c, _summary_ids(smol_tok, [("The", 1)]))  # no content word
    assert _walk(c, smol_tok(ABSTAIN, add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id])


def test_decoding_a_grounded_summary_end_to_end(tmp_path) -> None:
    """Sampled under the automaton with a tiny model: every finished sentence is a span of the passage it cites."""
    from transformers import AutoModelForCausalLM

    from rag_pipeline.answer import summary
    from rag_pipeline.answer.grounded import GroundedSummaryConstraint

    tok = build_tiny_tokenizer(chat=True)
    model = AutoModelForCausalLM.from_pretrained(str(build_tiny_llama(tmp_path / "llama")))
    docs = ["The cat near the river is red.", "The fox near the river is blue."]
    said = 0
    for seed in range(6):
        torch.manual_seed(seed)
        c = GroundedSummaryConstraint(tok, docs, max_sentences=3)
        prompt = tok("Summarize: what colour is the fox?", return_tensors="pt")
        width = prompt["input_ids"].shape[1]
        out = model.generate(**prompt, max_new_tokens=40, do_sample=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             prefix_allowed_tokens_fn=lambda b, ids: c.allowed(ids[width:].tolist()))
        text = tok.decode(out[0, width:], skip_special_tokens=True).strip()
        if text == ABSTAIN:
            continue
        for sentence, cited in summary.sentences_of(summary.complete_part(text)):
            assert len(cited) == 1 and sentence in docs[cited[0] - 1], text
            said += 1
    assert said > 0
