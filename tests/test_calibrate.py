"""Threshold search of the calibrated abstention, on hand-made scores."""

from __future__ import annotations

import math

import pytest

from rag_pipeline.eval.calibrate import choose_threshold, sweep


def test_sweep_counts_squad2_figures_at_each_cut() -> None:
    # margins: two answerable (f1 1.0 and 0.5), two unanswerable
    rows = sweep([-2.0, 1.0, 0.0, 3.0], [1.0, 0.5, 0.0, 0.0], [True, True, False, False])
    by_t = {r["threshold"]: r for r in rows}
    assert sorted(by_t) == [-math.inf, -1.0, 0.5, 2.0, math.inf]
    never = by_t[math.inf]  # answer everything
    assert never["overall_f1"] == pytest.approx(1.5 / 4) and never["false_abstain_rate"] == 0.0 and never["noans_acc"] == 0.0
    always = by_t[-math.inf]  # abstain on everything
    assert always["overall_f1"] == pytest.approx(2 / 4) and always["false_abstain_rate"] == 1.0 and always["noans_acc"] == 1.0
    mid = by_t[0.5]  # abstains on margins 1.0 (answerable, f1 .5 lost) and 3.0 (unanswerable, right)
    assert mid["overall_f1"] == pytest.approx((1.0 + 1) / 4) and mid["false_abstain_rate"] == 0.5 and mid["has_f1"] == 0.5


def test_choose_threshold_maximises_overall_f1_under_the_false_abstain_cap() -> None:
    margins = [-3, -2, -1, 0.5, 1, 2, 2.5, 3]
    f1s = [1, 1, 1, 0.2, 0, 0, 0, 0]
    answerable = [True, True, True, True, False, False, False, True]
    free = choose_threshold(margins, f1s, answerable, max_false_abstain=1.0)
    # abstain above 0.75: the three unanswerable right, the answerable at margin 3 (F1 0) lost, the 0.2 answer kept
    assert free["threshold"] == pytest.approx(0.75) and free["false_abstain_rate"] == pytest.approx(0.2)
    assert free["overall_f1"] == pytest.approx((3.2 + 3) / 8)
    capped = choose_threshold(margins, f1s, answerable, max_false_abstain=0.1)
    assert capped["threshold"] == math.inf  # any abstention would cost one of five answerable questions
    assert capped["overall_f1"] == pytest.approx(3.2 / 8)
    never = choose_threshold(margins, f1s, answerable, max_false_abstain=0.0)
    assert never["false_abstain_rate"] == 0.0 and never["threshold"] == math.inf


def test_forced_abstentions_count_at_every_threshold() -> None:
    # the third question's best answer was itself a refusal: it abstains even when nothing else does
    rows = sweep([-1.0, 0.0, math.inf], [1.0, 0.0, 0.0], [True, True, True])
    assert all(r["false_abstain_rate"] >= 1 / 3 for r in rows)
    best = choose_threshold([-1.0, 0.0, math.inf], [1.0, 0.0, 0.0], [True, True, True], max_false_abstain=0.15)
    assert best["false_abstain_rate"] == pytest.approx(1 / 3)  # infeasible cap: the fewest false abstentions


# ---------------------------------------------------------------------------------------------
# The stage: what it leaves out is listed; a file without answers is refused
# ---------------------------------------------------------------------------------------------


class _Said:
    def __init__(self, raw: str, margin: float, passage: str = "Paris is the capital of France.") -> None:
        self.raw, self.margin, self.answer = raw, margin, raw
        self.abstained, self.abstain_reason, self.rejected, self.fallback = False, None, None, None
        self.retrieved = [{"id": "c1", "doc_id": "d1", "title": "France", "text": passage}]


class _FakePipeline:
    """Answers 'Paris' with a margin of -1 (confident) to every question, from a passage that says so."""

    def answer_batch(self, questions: list[str], margins: bool = False) -> list[_Said]:
        return [_Said("Paris [1]", -1.0) for _ in questions]


def _fake_load(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    from rag_pipeline.answer.ask import Pipeline

    monkeypatch.setattr(Pipeline, "load", staticmethod(lambda cfg, **kw: calls.append(cfg) or _FakePipeline()))


def test_answerable_records_without_an_answer_are_left_out_and_listed(tmp_path, monkeypatch, capsys) -> None:
    """Kept, such a record would count as unanswerable and pull the threshold toward abstaining."""
    import json

    from rag_pipeline.eval.calibrate import CalibrateConfig, main

    calls: list = []
    _fake_load(monkeypatch, calls)
    rows = [{"id": "a", "question": "Capital of France?", "answer": "Paris"}, {"id": "b", "question": "Moon base age?", "answer": [], "answerable": False},
            {"id": "c", "question": "Capital of Peru?", "answer": []}]
    qa = tmp_path / "dev.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(CalibrateConfig(adapter=str(tmp_path / "adapter"), qa=str(qa), dry_run=True)) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 validation questions (1 answerable, 0 yes/no)")
    assert "left out 1 records: 1 answerable but no answer given" in out and "(c)" in out


def test_a_file_without_answers_is_refused_before_loading_the_model(tmp_path, monkeypatch) -> None:
    from rag_pipeline.eval.calibrate import CalibrateConfig, run
    from rag_pipeline.errors import InputError

    calls: list = []
    _fake_load(monkeypatch, calls)
    qa = tmp_path / "dev.csv"
    qa.write_text("id,question\na,Capital of France?\nb,Capital of Peru?\n")
    with pytest.raises(InputError, match=r"dev\.csv has no answer column .*columns seen: id, question.* --answer-field"):
        run(CalibrateConfig(adapter=str(tmp_path / "adapter"), qa=str(qa), dry_run=True))
    assert calls == []


def test_answers_are_scored_as_the_answer_check_shows_them(env, tmp_path, monkeypatch) -> None:
    """'The [1]' and an answer its passage does not hold are never shown by ask (the answer check): calibration scores
    the grounded span shown instead (the abstention ruled out, the first margin kept), and an answer refused even then
    as an abstention at every threshold, so its false-abstention ceiling holds with the check on."""
    import json

    from rag_pipeline.answer import ask as A
    from rag_pipeline.eval.calibrate import CalibrateConfig, run

    # question -> (free answer, grounded answer, margin); the tiny index retrieves the Moon's document for all
    script = {"Q0 satellite of Earth?": ("the Moon [1]", "-", -1.0), "Q1 satellite of Earth?": ("The [1]", "the Moon [1]", -2.0),
              "Q2 satellite of Earth?": ("Jupiter and Saturn [1]", "The [1]", -3.0), "Q3 satellite of Earth?": ("the Moon [1]", "-", 5.0)}
    real_load = A.Pipeline.load

    def load(cfg, **kw):
        pipe = real_load(cfg, **kw)

        def gen(texts, docs=None, margins=False, grounded_=False, **_):
            assert margins  # calibrate scores margins, and the grounded decode rules the abstention out
            return [(script[q][1 if grounded_ else 0], script[q][2]) for q in (next(k for k in script if k in t) for t in texts)]

        monkeypatch.setattr(pipe, "_generate", gen)
        return pipe

    monkeypatch.setattr(A.Pipeline, "load", staticmethod(load))
    qa = tmp_path / "dev.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "the Moon"}) + "\n" for i, q in enumerate(script)))
    cfg = {"adapter": str(env["adapter"]), "index": str(env["index"]), "qa": str(qa), "dry_run": True, "limit": 0, "max_false_abstain": 1.0,
           "device": "cpu", "dtype": "float32", "min_score": -1.0, "k": 1}
    counted = run(CalibrateConfig(**cfg))
    assert counted["answer_check"] == {"counted": True, "refused": 1, "grounded": 1, "reread": 0}
    # thresholds at 4.0 and above answer q0, q1 (the span, F1 1) and q3; q2 is refused whatever the threshold
    assert counted["threshold"] == "inf" and counted["false_abstain_rate"] == pytest.approx(0.25)
    assert counted["overall_f1"] == pytest.approx(0.75)
    monkeypatch.setattr(A.Pipeline, "load", staticmethod(lambda cfg, **kw: _scripted_unchecked(real_load(cfg, **kw), script, monkeypatch)))
    alone = run(CalibrateConfig(**cfg, count_checked=False))  # the generator's own answers: q1 and q2 score F1 0, shown
    assert alone["answer_check"] == {"counted": False, "refused": 0, "grounded": 0, "reread": 0} and alone["false_abstain_rate"] == 0.0
    assert alone["overall_f1"] == pytest.approx(0.5)


def _scripted_unchecked(pipe, script, monkeypatch):
    def gen(texts, docs=None, margins=False, grounded_=False, **_):
        assert not grounded_  # the check is off: nothing is decoded again
        return [(script[q][0], script[q][2]) for q in (next(k for k in script if k in t) for t in texts)]

    monkeypatch.setattr(pipe, "_generate", gen)
    return pipe

def test_the_answer_start_is_stored_with_the_threshold_and_followed_by_calibrated_answering(tmp_path, monkeypatch) -> None:
    """calibrate records which opening the margins' answers were allowed; ask, serve and evaluate then decode so."""
    import json
    from types import SimpleNamespace

    from rag_pipeline.answer.ask import Pipeline
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.eval.calibrate import CalibrateConfig, run

    with pytest.raises(ConfigError, match="--answer-start any or not-refusal-word"):
        CalibrateConfig(adapter="a", answer_start="calibrated")
    _fake_load(monkeypatch, [])
    qa = tmp_path / "dev.jsonl"
    qa.write_text(json.dumps({"id": "a", "question": "Capital of France?", "answer": "Paris"}) + "\n")
    for start in ("any", "not-refusal-word"):
        assert run(CalibrateConfig(adapter="a", qa=str(qa), dry_run=True, answer_start=start))["answer_start"] == start

    def pipe(setting: str, calibrations: dict, grounded: bool = False) -> str:
        return Pipeline.answer_start(SimpleNamespace(cfg=SimpleNamespace(answer_start=setting), calibrations=calibrations), grounded)

    banned = {"threshold": 1.0, "answer_start": "not-refusal-word"}
    assert pipe("calibrated", {"free": banned}) == "not-refusal-word"
    assert pipe("calibrated", {"free": banned}, grounded=True) == "any"  # each decoding mode as its own threshold was calibrated
    assert pipe("calibrated", {"grounded": banned}, grounded=True) == "not-refusal-word"
    assert pipe("calibrated", {"free": {"threshold": 1.0}}) == pipe("calibrated", {}) == "any"  # calibrations made before it was recorded
    assert pipe("any", {"free": banned}) == "any"  # the flag wins


def _scripted_calibration(script: dict, env, tmp_path, monkeypatch) -> tuple[list, object, dict]:
    """Pipelines whose generator answers ``script`` (question -> (answer, margin)), a copy of the tiny adapter, and a
    dev file of its questions (the first two answerable, "the Moon"): (the margins flag of each generation call,
    the adapter copy, calibrate's settings)."""
    import json
    import shutil

    from rag_pipeline.answer import ask as A

    seen: list = []
    real_load = A.Pipeline.load

    def load(cfg, **kw):
        pipe = real_load(cfg, **kw)

        def gen(texts, docs=None, margins=False, grounded_=False, **_):
            seen.append(margins)
            return [script[q] for q in (next(k for k in script if k in t) for t in texts)]

        monkeypatch.setattr(pipe, "_generate", gen)
        return pipe

    monkeypatch.setattr(A.Pipeline, "load", staticmethod(load))
    adapter = tmp_path / "adapter"
    shutil.copytree(env["adapter"], adapter)
    qa = tmp_path / "dev.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "the Moon" if i < 2 else [], "answerable": i < 2}) + "\n"
                          for i, q in enumerate(script)))
    cfg = {"adapter": str(adapter), "index": str(env["index"]), "qa": str(qa), "limit": 0, "device": "cpu", "dtype": "float32",
           "min_score": -1.0, "k": 1}
    return seen, adapter, cfg


def test_a_summary_abstention_is_calibrated_stored_apart_and_applied(env, tmp_path, monkeypatch) -> None:
    """calibrate --task summary scores each best non-abstaining summary by whether it holds the answer, stores its
    threshold under the summary mode, and ask --task summary then withholds a summary whose margin is above it."""
    from rag_pipeline.adapter_meta import read_adapter_meta
    from rag_pipeline.answer import ask as A
    from rag_pipeline.answer.settings import AnswerSettings
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.eval.calibrate import CalibrateConfig, run

    # question -> (best summary, margin); q2 is unanswerable
    script = {"Q0 satellite of Earth?": ("The Moon orbits the Earth [1].", -1.0),
              "Q1 satellite of Earth?": ("Jupiter has moons [1].", 2.0),
              "Q2 satellite of Earth?": ("Saturn has rings [1].", 4.0)}
    seen, adapter, cfg = _scripted_calibration(script, env, tmp_path, monkeypatch)
    result = run(CalibrateConfig(**cfg, task="summary", max_false_abstain=0.5))
    # withholding above 3.0 abstains on q2 (right) and keeps q0 (holds the answer) and q1 (scores 0, not refused)
    assert result["task"] == "summary" and result["threshold"] == pytest.approx(3.0) and result["overall_f1"] == pytest.approx(2 / 3)
    stored = read_adapter_meta(adapter).abstention
    assert set(stored) == {"summary"}  # the short answer's calibration is not touched
    pipe = A.Pipeline.load(AnswerSettings(**{k: v for k, v in cfg.items() if k not in ("qa", "limit")}, task="summary"))
    answers = pipe.answer_batch(list(script))
    assert seen[-1] is True  # the stored threshold makes ask score margins
    assert [(a.abstained, a.abstain_reason) for a in answers] == [(False, None), (False, None), (True, "calibration")]
    assert answers[0].sentences and answers[2].margin == 4.0
    with pytest.raises(ConfigError, match="--task extract and --grounded"):
        CalibrateConfig(adapter="a", task="extract", grounded=True)


def test_a_json_abstention_is_calibrated_under_its_schema_and_applied_to_that_schema_only(env, tmp_path, monkeypatch) -> None:
    """calibrate --task extract scores each best non-null JSON answer by its answer field's F1, stores the threshold
    under the extract mode with the schema; ask then answers the null object above it, under that schema only."""
    import json

    from rag_pipeline.adapter_meta import read_adapter_meta
    from rag_pipeline.answer import ask as A
    from rag_pipeline.answer import structured
    from rag_pipeline.answer.settings import AnswerSettings
    from rag_pipeline.data.tasks import EXTRACT_SCHEMA
    from rag_pipeline.eval.calibrate import CalibrateConfig, extract_score, run

    script = {"Q0 satellite of Earth?": ('{"answer":"the Moon","quote":"the Moon orbits"}', -1.0),
              "Q1 satellite of Earth?": ('{"answer":"Jupiter","quote":null}', 2.0),
              "Q2 satellite of Earth?": ('{"answer":"Saturn","quote":null}', 4.0),
              "Q3 satellite of Earth?": ('{"answer":null,"quote":null}', 0.5)}  # the best answer is still the null object
    seen, adapter, cfg = _scripted_calibration(script, env, tmp_path, monkeypatch)
    result = run(CalibrateConfig(**cfg, task="extract", max_false_abstain=0.5))
    # above 3.0: q2 abstains (right), q0 is kept (F1 1), q1 kept (F1 0), q3 is an abstention at every threshold
    assert result["task"] == "extract" and result["threshold"] == pytest.approx(3.0) and result["overall_f1"] == pytest.approx(3 / 4)
    assert result["schema"] == structured.canonical(EXTRACT_SCHEMA) and set(read_adapter_meta(adapter).abstention) == {"extract"}
    assert extract_score('{"answer":"the Moon","quote":null}', ["Moon"]) == 1.0 and extract_score("{", ["Moon"]) == 0.0
    settings = {k: v for k, v in cfg.items() if k not in ("qa", "limit")}
    pipe = A.Pipeline.load(AnswerSettings(**settings, task="extract", schema=structured.canonical(EXTRACT_SCHEMA)))
    answers = pipe.answer_batch(list(script))
    assert seen[-1] is True  # the stored threshold makes ask score margins
    assert [(a.abstained, a.abstain_reason) for a in answers][:3] == [(False, None), (False, None), (True, "calibration")]
    assert answers[2].answer == '{"answer":null,"quote":null}' and answers[2].data == {"answer": None, "quote": None}
    assert answers[2].raw == script["Q2 satellite of Earth?"][0] and answers[2].margin == 4.0
    other = {"type": "object", "properties": {"answer": {"type": ["string", "null"]}}, "required": ["answer"]}
    pipe = A.Pipeline.load(AnswerSettings(**settings, task="extract", schema=json.dumps(other)))
    assert pipe.calibration is None  # another schema: another null object, no threshold
    pipe.answer_batch(list(script)[:1])
    assert seen[-1] is False
