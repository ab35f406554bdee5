"""ask --orders both: each short answer decoded with its passages in both orders; the answer of the lower null margin is
shown, withheld when the mean of the two margins is over the calibrated threshold."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from rag_pipeline.adapter_meta import read_adapter_meta, write_adapter_meta
from rag_pipeline.answer import ask as A
from rag_pipeline.errors import ConfigError

QUESTIONS = ["Which volcano in Sicily erupts almost every year?", "Who wrote the first computer program?",
             "Where is the tallest mountain?"]
NEVER = {"free": {"threshold": 1e9}}  # the calibrated threshold withholds nothing: the choice of the order alone shows
CONTEXTS = [[{"id": f"q{q}-a", "title": "A", "text": "Etna erupts almost every year. Ada Lovelace wrote a program."},
             {"id": f"q{q}-b", "title": "B", "text": "Everest is the tallest mountain, in the Himalaya."}] for q in range(3)]


@pytest.fixture()
def adapter(env: dict, tmp_path: Path) -> Path:
    """A copy of the tiny adapter with a calibrated abstention for free short answers."""
    out = tmp_path / "adapter"
    shutil.copytree(env["adapter"], out)
    write_adapter_meta(out, dataclasses.replace(read_adapter_meta(out), abstention={"free": {"threshold": 1e9, "yes_no_questions": 0}}))
    return out


def cfg(env: dict, path: Path, **kw) -> A.AskConfig:
    return A.AskConfig(**{"index": str(env["index"]), "adapter": str(path), "device": "cpu", "dtype": "float32", "max_new_tokens": 4,
                          "min_score": -1.0, "answer_check": "off", "orders": "both", "reread": "off", **kw})  # the orders alone


def test_both_orders_where_they_cannot_apply_are_refused_before_the_model_loads(env: dict, adapter: Path, monkeypatch) -> None:
    for setting, named in (({"grounded": True}, "--grounded"), ({"abstention": "greedy"}, "--abstention greedy"),
                           ({"task": "summary"}, "--task summary")):
        with pytest.raises(ConfigError, match=f"compares the null margins of free short answers.*not with {named}"):
            cfg(env, adapter, **setting)
    monkeypatch.setattr(A.generator, "load_generator", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(AssertionError, match="loaded"):  # with a calibrated threshold, the checks pass and the model loads
        A.Pipeline.load(cfg(env, adapter))
    write_adapter_meta(adapter, dataclasses.replace(read_adapter_meta(adapter), abstention=None))
    with pytest.raises(ConfigError, match="has no calibrated threshold for free short answers: run rag-pipeline calibrate"):
        A.Pipeline.load(cfg(env, adapter))


def test_the_answer_is_the_one_of_the_order_with_the_lower_margin(env: dict, adapter: Path) -> None:
    """Equal to answering each order alone: the lower of the two margins, its raw answer, its passages in that order; the
    usage counts the decodes of both."""
    one = A.Pipeline.load(cfg(env, adapter, orders="one"))
    one.calibrations = NEVER
    given = [CONTEXTS[0], CONTEXTS[1][::-1], CONTEXTS[2]]
    usage: dict = {i: {} for i in range(3)}
    forward = one.answer_batch(QUESTIONS, contexts=given, on_usage=lambda i, u: usage[0].__setitem__(i, u))
    backward = one.answer_batch(QUESTIONS, contexts=[c[::-1] for c in given], on_usage=lambda i, u: usage[1].__setitem__(i, u))
    one.cfg = cfg(env, adapter)  # the same loaded models, both orders
    answers = one.answer_batch(QUESTIONS, contexts=given, on_usage=lambda i, u: usage[2].__setitem__(i, u))
    swapped = [b.margin < f.margin for f, b in zip(forward, backward)]
    assert any(swapped) and not all(swapped)  # the tiny model prefers passage A first: each order wins somewhere
    for i, (a, f, b) in enumerate(zip(answers, forward, backward)):
        best = b if swapped[i] else f
        assert (a.raw, [d["id"] for d in a.retrieved]) == (best.raw, [d["id"] for d in best.retrieved])
        assert a.margin == pytest.approx((f.margin + b.margin) / 2)  # judged on the mean of the two orders' margins
        assert usage[2][i].completion_tokens == usage[0][i].completion_tokens + usage[1][i].completion_tokens
        assert usage[2][i].prompt_tokens == usage[0][i].prompt_tokens + usage[1][i].prompt_tokens


def test_the_swapped_answer_cites_the_passages_as_its_prompt_numbered_them(env: dict, adapter: Path, monkeypatch) -> None:
    """A scripted generator whose answers cite [1] and whose margin is lower where passage B comes first: the answer shown
    is that order's, [1] is B, and a question shown one passage (nothing to reverse) is decoded once."""
    pipe = A.Pipeline.load(cfg(env, adapter))
    pipe.calibrations = NEVER
    calls = []

    def generate(texts, docs, margins=False, grounded=False, **kw):
        calls.append([d[0]["id"] for d in docs])
        return [(f"{d[0]['title']} it is [1]", 0.0 if d[0]["title"] == "B" else 1.0) for d in docs]

    monkeypatch.setattr(pipe, "_generate", generate)
    contexts = [CONTEXTS[0], CONTEXTS[1][::-1], CONTEXTS[2][:1]]
    answers = pipe.answer_batch(QUESTIONS, contexts=contexts)
    assert calls == [["q0-a", "q1-b", "q2-a"], ["q0-b", "q1-a"]]  # the first pass, then the rows with two passages reversed
    assert [a.answer for a in answers] == ["B it is [1]", "B it is [1]", "A it is [1]"]
    assert [a.margin for a in answers] == [0.5, 0.5, 1.0]  # the mean of the two orders' margins; one passage: its own
    assert [[c.chunk_id for c in a.citations] for a in answers] == [["q0-b"], ["q1-b"], ["q2-a"]]
    assert [d["id"] for d in answers[0].retrieved] == ["q0-b", "q0-a"]


def test_evaluate_gives_both_orders_to_the_adapters_and_not_to_the_base_model() -> None:
    from rag_pipeline.eval.evaluate import EvaluateConfig, answer_settings

    c = EvaluateConfig(adapter=["adapters/smollm2-disfl-qa"], orders="both")
    assert (answer_settings(c, "adapters/smollm2-disfl-qa").orders, answer_settings(c, None).orders) == ("both", "one")


def test_the_threshold_judges_the_mean_of_the_two_margins(env: dict, adapter: Path, monkeypatch) -> None:
    """The surer order's margin 0 is under the threshold 2, the other order's 10 is over it: their mean, 5, withholds the
    surer answer (kept in ``raw``); with 3 (over the threshold too) the mean, 1.5, shows it."""
    pipe = A.Pipeline.load(cfg(env, adapter))
    pipe.calibrations = {"free": {"threshold": 2.0, "yes_no_questions": 0}}
    for other, withheld in ((10.0, True), (3.0, False)):
        monkeypatch.setattr(pipe, "_generate", lambda texts, docs, *a, other=other, **kw: [
            (f"{d[0]['title']} it is [1]", 0.0 if d[0]["title"] == "A" else other) for d in docs])
        a = pipe.answer_batch(QUESTIONS[:1], contexts=CONTEXTS[:1])[0]
        assert (a.abstained, a.abstain_reason, a.raw, a.margin) == (withheld, "calibration" if withheld else None, "A it is [1]",
                                                                    (0.0 + other) / 2)


def test_questions_held_before_decoding_keep_their_places(env: dict, adapter: Path, monkeypatch) -> None:
    """A question the retrieval threshold answers is never decoded: the others' rows still pair with their own
    questions and passages when the reversed order wins."""
    pipe = A.Pipeline.load(cfg(env, adapter, min_score=0.5))
    pipe.calibrations = NEVER
    docs = [[{**d, "score": 0.9, "doc_id": d["id"], "source": "s", "truncated": False} for d in c] for c in CONTEXTS]
    monkeypatch.setattr(pipe, "_retrieve", lambda qs: (docs, [0.9, 0.1, 0.9], [["Etna"], [""], ["Everest"]]))
    monkeypatch.setattr(pipe, "_generate", lambda texts, ds, *a, **kw: [
        (f"{d[0]['id']} [1]", 0.0 if d[0]["title"] == "B" else 1.0) for d in ds])
    answers = pipe.answer_batch(QUESTIONS)
    assert [a.abstain_reason for a in answers] == [None, "threshold", None]
    assert [a.answer for a in answers] == ["q0-b [1]", A.ABSTAIN, "q2-b [1]"]
    assert [a.citations[0].chunk_id for a in (answers[0], answers[2])] == ["q0-b", "q2-b"]


def test_the_answer_check_decodes_again_from_the_surer_orders_prompt(env: dict, adapter: Path, monkeypatch) -> None:
    """The reversed order's answer fails the check (its words are in no passage): the grounded decode gets that order's
    prompt and passages, and its answer cites them as that prompt numbered them."""
    pipe = A.Pipeline.load(cfg(env, adapter, answer_check="grounded"))
    pipe.calibrations = NEVER
    calls = []

    def generate(texts, docs, margins=False, grounded=False, **kw):
        calls.append((grounded, texts, [[d["id"] for d in ds] for ds in docs]))
        if grounded:
            return [("Everest [1]", None) for _ in docs]
        return [("Kilimanjaro [1]" if d[0]["title"] == "B" else "Etna [1]", 0.0 if d[0]["title"] == "B" else 1.0) for d in docs]

    monkeypatch.setattr(pipe, "_generate", generate)
    a = pipe.answer_batch(QUESTIONS[:1], contexts=CONTEXTS[:1])[0]
    grounded, texts, ids = calls[-1]
    assert grounded and ids == [["q0-b", "q0-a"]] and texts == [calls[1][1][0]]  # the reversed pass's prompt text
    assert texts[0].index("Everest is the tallest") < texts[0].index("Etna erupts")
    assert (a.answer, a.rejected, a.fallback, [c.chunk_id for c in a.citations]) == ("Everest [1]", "unsupported", "grounded", ["q0-b"])


def test_serve_refuses_both_orders_without_a_calibrated_threshold_before_it_binds(env: dict, adapter: Path, monkeypatch) -> None:
    from rag_pipeline import serve

    write_adapter_meta(adapter, dataclasses.replace(read_adapter_meta(adapter), abstention=None))
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the server must not start"))
    with pytest.raises(ConfigError, match="has no calibrated threshold for free short answers"):
        serve.run(serve.ServeConfig(index=str(env["index"]), adapter=str(adapter), orders="both", device="cpu"))


def test_the_surer_order_is_the_lower_margin_and_a_tie_keeps_the_first() -> None:
    from rag_pipeline.answer.abstention import surer_order

    assert surer_order(3.0, 1.0) == (True, 2.0)
    assert surer_order(1.0, 3.0) == (False, 2.0)
    assert surer_order(2.0, 2.0) == (False, 2.0)


def test_an_answer_read_again_after_the_swap_cites_the_passage_as_the_swapped_prompt_numbered_it(env: dict, adapter: Path,
                                                                                               monkeypatch) -> None:
    """``--reread relevant`` after ``--orders both``: the surer order's answer cites B, which holds none of the question's
    words; A is read alone, and its [1] becomes [2], A's number in the order shown."""
    pipe = A.Pipeline.load(cfg(env, adapter, reread="relevant"))
    pipe.calibrations = NEVER

    def generate(texts, docs, margins=False, grounded=False, **kw):
        return [(f"{d[0]['title']} it is [1]", 0.0 if d[0]["title"] == "B" else 1.0) for d in docs]

    monkeypatch.setattr(pipe, "_generate", generate)
    answers = pipe.answer_batch(QUESTIONS[:2], contexts=[CONTEXTS[0], CONTEXTS[1][::-1]])
    assert [a.answer for a in answers] == ["A it is [2]", "A it is [2]"]
    assert [[c.chunk_id for c in a.citations] for a in answers] == [["q0-a"], ["q1-a"]]
    assert [[d["id"] for d in a.retrieved] for a in answers] == [["q0-b", "q0-a"], ["q1-b", "q1-a"]]
    assert [(a.rejected, a.fallback, a.margin, a.raw) for a in answers] == [("misread", "reread", 1.0, "B it is [1]")] * 2
