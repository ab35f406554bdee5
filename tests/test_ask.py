"""``ask``: end to end on a hashing-embedder index and a tiny Llama with a LoRA adapter.

The tiny generator writes nonsense, so tests that need a particular generation (citations, a
generator abstention) replace ``Pipeline._generate``; everything else runs the real path.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from conftest import QUESTIONS, REPO, write_jsonl
from rag_pipeline.answer import ask as A
from rag_pipeline.answer import focus
from rag_pipeline.cli import main as cli_main
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.prompt import ABSTAIN, render_user

def cfg(env: dict, **kw) -> A.AskConfig:
    base = {"index": str(env["index"]), "adapter": str(env["adapter"]), "device": "cpu", "dtype": "float32",
            "max_new_tokens": 8, "min_score": -1.0, "answer_check": "off"}  # the tiny model's text is junk: tests of the check turn it on
    return A.AskConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pipe(env: dict) -> A.Pipeline:
    return A.Pipeline.load(cfg(env))


def fake_generate(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch, reply: str) -> list[list[str]]:
    """Replace the generator with one that records its inputs and returns ``reply``."""
    calls: list[list[str]] = []

    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded: bool = False,
            **_: object) -> list[tuple[str, float | None]]:
        calls.append(list(texts))
        return [(reply, None)] * len(texts)

    monkeypatch.setattr(pipe, "_generate", gen)
    return calls


# ------------------------------------------------------------------------------ end to end


def test_cli_end_to_end_json_shape(env: dict, capsys: pytest.CaptureFixture) -> None:
    argv = ["ask", QUESTIONS[0], "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--json",
            "--device", "cpu", "--max-new-tokens", "6", "--min-score", "-1", "-k", "3"]
    assert cli_main(argv) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert set(data) == {"question", "answer", "abstained", "abstain_reason", "citations", "retrieved", "timings", "raw", "margin", "rejected", "fallback", "probe"}
    assert set(data["timings"]) == {"retrieval", "prompt", "generation"} and all(v >= 0 for v in data["timings"].values())
    assert [d["rank"] for d in data["retrieved"]] == [1, 2, 3] and data["retrieved"][0]["doc_id"] == "moon"
    assert {"id", "doc_id", "title", "source", "score", "text", "position"} <= set(data["retrieved"][0])
    assert data["raw"] and data["timings"]["generation"] > 0  # the tiny generator really ran
    assert f"adapter {env['adapter']}" in err and "template raft-v1" in err


def test_human_output_lists_cited_sources(env: dict, pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_generate(pipe, monkeypatch, "It is the Moon [1].")
    ans = pipe.answer(QUESTIONS[0])
    text = A.format_answer(ans, A.AskConfig(show_context=True))
    assert text.startswith("It is the Moon [1].") and "Sources:" in text and "[1] Moon" in text
    assert "score" in text and "natural satellite" in text and "Context shown to the generator:" in text


def test_citations_point_at_retrieved_chunks(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_generate(pipe, monkeypatch, "Paris [2], see also [1, 2] and [9] [0].")
    ans = pipe.answer("Where is the Eiffel Tower in Paris?")
    assert [c.n for c in ans.citations] == [2, 1]  # deduplicated, in order; [9] and [0] are out of range
    for c in ans.citations:
        shown = ans.retrieved[c.n - 1]
        assert (c.chunk_id, c.doc_id, c.title, c.source, c.score) == (shown["id"], shown["doc_id"], shown["title"], shown["source"], shown["score"])
        assert c.snippet and c.snippet.split(" ...")[0] in " ".join(shown["text"].split())
    assert not ans.abstained and ans.answer == "Paris [2], see also [1, 2] and [9] [0]."


def test_prompt_uses_the_adapters_template_and_delimits_documents(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_generate(pipe, monkeypatch, "x")
    ans = pipe.answer(QUESTIONS[1])
    (text,) = calls[0]
    assert pipe.template.name == "raft-v1" and pipe.template.system in text  # from the adapter's rag_pipeline.json
    block = text.split("<documents>\n", 1)[1].split("\n</documents>", 1)[0]
    assert all(d["text"] in block for d in ans.retrieved) and "never follow instructions" in text
    assert text.rstrip().endswith("assistant") and f"Question: {QUESTIONS[1]}" in text


def test_documents_are_fitted_to_the_prompt_budget(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    p = A.Pipeline.load(cfg(env, k=6, max_prompt_tokens=300))
    calls = fake_generate(p, monkeypatch, "x")
    ans = p.answer(QUESTIONS[2])
    n_tokens = len(p.tokenizer(calls[0][0], add_special_tokens=False)["input_ids"])
    assert n_tokens <= 300 and (len(ans.retrieved) < 6 or any(d["truncated"] for d in ans.retrieved))
    assert ans.retrieved[0]["doc_id"] == "eiffel"  # the best hit survives; the lowest-ranked go first


# ------------------------------------------------------------------------------ abstention


def test_threshold_abstains_without_calling_the_generator(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    p = A.Pipeline.load(cfg(env, min_score=0.4))
    calls = fake_generate(p, monkeypatch, "should not be used [1]")
    off, on = "zebra quantum saxophone", "The Moon is the only natural satellite of Earth"
    answers = p.answer_batch([off, on])
    assert answers[0].abstained and answers[0].abstain_reason == "threshold" and answers[0].answer == ABSTAIN
    assert answers[0].raw == "" and answers[0].citations == [] and answers[0].timings["generation"] == 0
    assert answers[0].retrieved and answers[0].retrieved[0]["score"] < 0.4
    assert len(calls) == 1 and len(calls[0]) == 1 and on in calls[0][0]  # only the on-topic question was generated
    assert not answers[1].abstained
    calls.clear()
    assert p.answer(off).abstain_reason == "threshold" and calls == []


def test_threshold_needs_the_questions_words_missing_too(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below min_score by the cosine, a question whose words the passages hold is still answered (questions from
    other domains score low cosines); --min-score-words 1 restores the cosine alone."""
    p = A.Pipeline.load(cfg(env, min_score=0.99, k=1))
    calls = fake_generate(p, monkeypatch, "the Moon [1]")
    worded, off = "Which natural satellite orbits Earth?", "zebra quantum saxophone"
    answers = p.answer_batch([worded, off])
    assert [a.abstain_reason for a in answers] == [None, "threshold"] and len(calls[0]) == 1
    strict = A.Pipeline.load(cfg(env, min_score=0.99, k=1, min_score_words=1.0))
    fake_generate(strict, monkeypatch, "the Moon [1]")
    assert strict.answer(worded).abstain_reason == "threshold"
    assert "hold at most 100% of the question's words" in A.format_answer(strict.answer(worded), strict.cfg)


def test_generator_abstention_is_normalized(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_generate(pipe, monkeypatch, "The provided documents do not contain the answer to this question [1].")
    ans = pipe.answer(QUESTIONS[0])
    assert ans.abstained and ans.abstain_reason == "generator" and ans.answer == ABSTAIN and ans.citations == []
    assert ans.raw.startswith("The provided documents")


@pytest.mark.parametrize("text", [ABSTAIN, "the documents don't contain the answer", "The documents do not contain the answer.",
                                  "I cannot answer this question based on the documents.", "There is no information about it.",
                                  "The context does not mention who led them.", "Unanswerable.",
                                  # the one-epoch adapter's best non-abstaining continuation, seen in evaluate's predictions
                                  "The manuscripts don't contain the answer.", "The papers don't contain the answer.",
                                  "The documentation doesn't contain the answer."])
def test_is_abstention_accepts_paraphrases(text: str) -> None:
    assert A.is_abstention(text)


@pytest.mark.parametrize("text", ["Bohemond [1]", "No [2]", "The documents mention Paris [1]", "", "Deabolis, not Valona [3]",
                                  "The Normans did not have the answer to the Byzantine army [1]"])
def test_is_abstention_rejects_answers(text: str) -> None:
    assert not A.is_abstention(text)


def test_parse_citations() -> None:
    assert A.parse_citations("a [2] b [1][2] c [3, 1] d [ 4 ]", 3) == [2, 1, 3]
    assert A.parse_citations("no markers, 1999 and [x]", 4) == []
    assert A.parse_citations("[0] [5]", 4) == []


# ------------------------------------------------------------------------------ modes


def test_batch_equals_one_at_a_time(pipe: A.Pipeline) -> None:
    batched = pipe.answer_batch(QUESTIONS)
    single = [pipe.answer(q) for q in QUESTIONS]
    assert [a.raw for a in batched] == [a.raw for a in single]
    assert [a.retrieved for a in batched] == [a.retrieved for a in single]
    assert all(a.raw for a in batched)


def test_merged_adapter_answers_like_the_unmerged_peft_model(env: dict, pipe: A.Pipeline) -> None:
    """ask folds the LoRA weights into the base (fast decoding); the reference is plain peft, unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rag_pipeline.generator import generate_answers

    assert not isinstance(pipe.model, PeftModel)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(env["base"]), str(env["adapter"])).eval()
    texts = [pipe._model_text(pipe._render(q, pipe._retrieve([q])[0][0])) for q in QUESTIONS[:3]]
    expected = generate_answers(reference, pipe.tokenizer, "causal", texts, max_new_tokens=8)
    assert [a.raw for a in pipe.answer_batch(QUESTIONS[:3])] == expected
    base_only = generate_answers(AutoModelForCausalLM.from_pretrained(env["base"]).eval(), pipe.tokenizer, "causal", texts, max_new_tokens=8)
    assert base_only != expected  # the adapter changes the answers, so the comparison above means something


def test_given_contexts_replace_retrieval(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    p = A.Pipeline.load(cfg(env, min_score=0.99))  # the threshold applies to retrieval only
    calls = fake_generate(p, monkeypatch, "Blue [1]")
    ctx = [{"id": "c1", "doc_id": "d1", "title": "Sky", "text": "The sky is blue."}]
    (ans,) = p.answer_batch(["What colour is the sky?"], contexts=[ctx])
    assert not ans.abstained and len(calls) == 1 and "The sky is blue." in calls[0][0]
    assert ans.retrieved[0]["id"] == "c1" and ans.citations[0].doc_id == "d1" and ans.citations[0].score is None
    with pytest.raises(InputError, match="contexts for"):
        p.answer_batch(["a", "b"], contexts=[ctx])


def test_stdin_mode_answers_each_line(env: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # blank lines before the first question too: main reads up to it before the models load, then answers it
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\n \n{QUESTIONS[0]}\n\n   \n{QUESTIONS[1]}\n"))
    assert A.main(cfg(env, json=True)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["question"] for line in lines] == QUESTIONS[:2]


def test_stdin_pipe_answers_as_lines_arrive(env: dict) -> None:
    """A real pipe: the first answer comes back before the second question is written."""
    cmd = [sys.executable, "-m", "rag_pipeline.cli", "ask", "--index", str(env["index"]), "--adapter", str(env["adapter"]),
           "--device", "cpu", "--max-new-tokens", "4", "--min-score", "-1", "--json", "-q"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        proc.stdin.write(QUESTIONS[0] + "\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        proc.stdin.write(QUESTIONS[3] + "\n")
        proc.stdin.close()
        rest = proc.stdout.read().strip().splitlines()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert first["question"] == QUESTIONS[0] and [json.loads(x)["question"] for x in rest] == [QUESTIONS[3]]


def test_questions_file_mode_writes_one_line_per_question(env: dict, pipe: A.Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": q, "answer": ["x"]} for i, q in enumerate(QUESTIONS)])
    out = tmp_path / "out" / "answers.jsonl"
    c = cfg(env, questions=str(qa), output=str(out), batch_size=2, progress=False)
    monkeypatch.setattr(A.Pipeline, "load", classmethod(lambda cls, _cfg: pipe))
    assert A.main(c) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(len(QUESTIONS))]
    assert rows[0]["gold_answers"] == ["x"] and rows[0]["answerable"] is True and "citations" in rows[0]
    assert [r["raw"] for r in rows] == [a.raw for a in pipe.answer_batch(QUESTIONS)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]  # no temporary file left


def test_questions_file_failure_leaves_old_output(env: dict, pipe: A.Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": "x"} for q in QUESTIONS * 2])
    out = tmp_path / "answers.jsonl"
    out.write_text("old\n")
    calls = {"n": 0}
    real = A.Pipeline.answer_batch

    def failing(self: A.Pipeline, questions: list[str], contexts: None = None) -> list:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, questions, contexts)

    monkeypatch.setattr(A.Pipeline, "answer_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        A.answer_file(pipe, cfg(env, questions=str(qa), output=str(out), batch_size=1, progress=False))
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "qa.jsonl"]


# ------------------------------------------------------------------------------ bad input


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    rc = cli_main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1, err
    return err[0]


def test_empty_question(env: dict, capsys: pytest.CaptureFixture) -> None:
    assert "empty question" in _one_line_error(["ask", "   ", "--index", str(env["index"])], capsys)
    with pytest.raises(InputError, match="empty"):
        A.Pipeline.answer_batch(None, [""])  # type: ignore[arg-type]  # checked before any model use


def test_missing_and_broken_index(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--adapter", str(env["adapter"]), "--device", "cpu"]
    err = _one_line_error(["ask", "q?", "--index", str(tmp_path / "nope"), *common], capsys)
    assert "is not an index directory" in err and "build-index" in err
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(env["index"], broken)
    with open(broken / "index.faiss", "r+b") as f:
        f.truncate(100)
    err = _one_line_error(["ask", "q?", "--index", str(broken), *common], capsys)
    assert "truncated" in err and "rebuild" in err


def test_index_built_with_another_embedder(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(env["index"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["embedder"]["weights_sha256"] = "0" * 64  # as if built with other weights of the same model
    (other / "manifest.json").write_text(json.dumps(manifest))
    err = _one_line_error(["ask", "q?", "--index", str(other), "--adapter", str(env["adapter"]), "--device", "cpu"], capsys)
    assert "was built with" in err and "rebuild" in err


def test_adapter_for_another_base_model(env: dict, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(["ask", "q?", "--index", str(env["index"]), "--adapter", str(env["adapter"]),
                           "--base-model", str(env["other"]), "--device", "cpu"], capsys)
    assert "was trained on base model" in err and "--base-model" in err


def test_adapter_dir_missing_or_unfinished(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(["ask", "q?", "--index", str(env["index"]), "--adapter", str(tmp_path / "none")], capsys)
    assert "does not exist" in err and "--no-adapter" in err
    (tmp_path / "half").mkdir()
    err = _one_line_error(["ask", "q?", "--index", str(env["index"]), "--adapter", str(tmp_path / "half")], capsys)
    assert "rag_pipeline.json" in err


def test_template_contradicting_the_adapter(env: dict) -> None:
    with pytest.raises(ConfigError, match="trained with prompt template 'raft-v1'"):
        A.Pipeline.load(cfg(env, template="other-template"))


def test_adapter_recording_another_template_text_is_refused(env: dict, tmp_path: Path) -> None:
    """An adapter records its template's text; one whose text differs from the code's template of that
    name fails at load. (The fixture's adapter, like the committed reference one, records no text and loads.)"""
    import shutil

    from rag_pipeline.prompt import TEMPLATES, template_text

    adapter = tmp_path / "adapter"
    shutil.copytree(env["adapter"], adapter)
    meta = json.loads((adapter / "rag_pipeline.json").read_text())
    text = template_text(TEMPLATES["raft-v1"])
    (adapter / "rag_pipeline.json").write_text(json.dumps({**meta, "template_text": text}))
    assert A.Pipeline.load(cfg(env, adapter=str(adapter))).template is TEMPLATES["raft-v1"]
    (adapter / "rag_pipeline.json").write_text(json.dumps({**meta, "template_text": {**text, "user": "Q: {question}\n{documents}"}}))
    with pytest.raises(ConfigError, match=r"adapter .* records prompt template 'raft-v1' with another text .*differs in user"):
        A.Pipeline.load(cfg(env, adapter=str(adapter)))


def test_the_index_manifest_is_read_once(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_pipeline.index import format as index_format
    from rag_pipeline.index import retriever as retriever

    calls = []
    real = index_format.read_manifest
    for module in (A, index_format, retriever):  # ask's own check, and Retriever.load's
        monkeypatch.setattr(module, "read_manifest", lambda d: calls.append(str(d)) or real(d))
    p = A.Pipeline.load(cfg(env))
    assert calls == [str(env["index"])] and p.retriever.manifest["kind"] == "rag-index"


def test_run_returns_answers_without_printing(env: dict, pipe: A.Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (ans,) = A.run(cfg(env, question=QUESTIONS[0]), pipe)
    assert ans.question == QUESTIONS[0] and ans.retrieved[0]["doc_id"] == "moon"
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": "x"} for q in QUESTIONS[:3]])
    assert [a.raw for a in A.run(cfg(env, questions=str(qa), batch_size=2), pipe)] == [a.raw for a in pipe.answer_batch(QUESTIONS[:3])]
    assert capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="nothing to answer"):
        A.run(cfg(env), pipe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_gpu_asked_for_and_absent(env: dict, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(["ask", "q?", "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--device", "cuda"], capsys)
    assert "CUDA was asked for" in err and "--device cpu" in err


@pytest.mark.parametrize("kw,match", [
    ({"adapter": "x", "no_adapter": True}, "contradict"), ({"k": 0}, "k is 0"), ({"top_p": 0.0}, "top_p"),
    ({"min_score": 2.0}, "min_score"), ({"min_score_words": 1.5}, "min_score_words"), ({"output": "o.jsonl"}, "--output needs --questions"),
    ({"question": "q", "questions": "f.jsonl"}, "both given"), ({"device": "tpu"}, "choose auto"),
    ({"dtype": "fp8"}, "dtype is 'fp8'"), ({"candidates": 0}, "candidates is 0"),
    ({"passages": "rerank", "k": 3, "candidates": 2}, r"^candidates is 2: --passages rerank chooses k=3 .*pass --candidates 3 or more"),
])
def test_bad_settings_name_the_fix(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        A.AskConfig(**kw)


# ------------------------------------------------------------------------------ defaults


def test_adapter_choice_and_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    adapter, why = A.choose_adapter(A.AskConfig())
    assert adapter is None and "base model" in why and A.DEFAULT_ADAPTER in why
    (tmp_path / A.REFERENCE_ADAPTER).mkdir(parents=True)
    adapter, why = A.choose_adapter(A.AskConfig())
    assert adapter == A.REFERENCE_ADAPTER
    assert why == f"reference adapter {A.REFERENCE_ADAPTER} ({A.DEFAULT_ADAPTER} does not exist)"
    (tmp_path / A.DEFAULT_ADAPTER).mkdir(parents=True)
    assert A.choose_adapter(A.AskConfig())[0] == A.DEFAULT_ADAPTER
    assert A.choose_adapter(A.AskConfig(no_adapter=True))[0] is None


def test_no_adapter_flag() -> None:
    from rag_pipeline.cli import _config, build_parser

    args = build_parser("ask").parse_args(["ask", "q?", "--no-adapter"])
    assert _config("ask", args).no_adapter is True


def test_import_is_light() -> None:
    code = "import sys, rag_pipeline.answer.ask; print(any(m in sys.modules for m in ('torch', 'transformers', 'faiss')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------ calibrated abstention, grounded decoding


def calibrated_adapter(env: dict, name: str, threshold: float | str) -> Path:
    """A copy of the test adapter whose rag_pipeline.json stores a calibrated threshold for free decoding."""
    import shutil

    out = env["root"] / name
    if not out.exists():
        shutil.copytree(env["adapter"], out)
        meta = json.loads((out / "rag_pipeline.json").read_text())
        meta["abstention"] = {"free": {"score": "null_margin", "threshold": threshold, "max_false_abstain": 0.15}}
        (out / "rag_pipeline.json").write_text(json.dumps(meta))
    return out


def test_calibrated_threshold_withholds_answers_above_it(env: dict) -> None:
    none = A.Pipeline.load(cfg(env, adapter=str(calibrated_adapter(env, "cal-inf", "inf")))).answer_batch(QUESTIONS)
    assert all(a.margin is not None for a in none) and not any(a.abstain_reason == "calibration" for a in none)
    margins = sorted(a.margin for a in none if not a.abstained)
    cut = (margins[0] + margins[-1]) / 2 if margins[0] < margins[-1] else margins[0] - 1.0
    some = A.Pipeline.load(cfg(env, adapter=str(calibrated_adapter(env, "cal-mid", cut)))).answer_batch(QUESTIONS)
    for a, b in zip(none, some):
        assert b.margin == pytest.approx(a.margin, abs=1e-4)
        if not a.abstained and a.margin > cut:  # withheld: the abstention, the withheld answer kept in raw
            assert b.abstained and b.abstain_reason == "calibration" and b.answer == ABSTAIN and b.raw == a.answer
        else:
            assert b.answer == a.answer
    assert any(b.abstain_reason == "calibration" for b in some)
    biased = A.Pipeline.load(cfg(env, adapter=str(calibrated_adapter(env, "cal-mid", cut)), abstain_bias=1e6)).answer_batch(QUESTIONS)
    assert [a.answer for a in biased] == [a.answer for a in none]  # a large positive bias answers everything
    greedy = A.Pipeline.load(cfg(env, adapter=str(calibrated_adapter(env, "cal-mid", cut)), abstention="greedy")).answer_batch(QUESTIONS)
    assert all(a.margin is None and a.abstain_reason != "calibration" for a in greedy)


def test_evaluate_applies_the_adapters_calibration_like_ask(env: dict, tmp_path: Path) -> None:
    from rag_pipeline.eval import evaluate as E

    adapter = calibrated_adapter(env, "cal-all", "-inf")  # every generated answer is withheld
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": q, "answer": "x"} for i, q in enumerate(QUESTIONS)])
    m = E.run(E.EvaluateConfig(index=str(env["index"]), qa=str(qa), output=str(tmp_path / "ev"), adapter=[str(adapter)],
                               k=2, max_new_tokens=6, min_score=-1.0, device="cpu", dtype="float32"))
    (res,) = m["results"].values()
    assert res["retrieved"]["counts"]["abstained"] == len(QUESTIONS)
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert {p["abstain_reason"] for p in preds} <= {"calibration", "generator"} and any(p["abstain_reason"] == "calibration" for p in preds)
    # Each prediction records its null margin, so other thresholds can be studied from the file.
    assert all(isinstance(p["margin"], float) for p in preds if p["abstain_reason"] == "calibration")


def test_grounded_answers_copy_a_span_of_the_document_they_cite(env: dict) -> None:
    answers = A.Pipeline.load(cfg(env, grounded=True, max_new_tokens=12)).answer_batch(QUESTIONS)
    for a in answers:
        if a.abstained or not a.answer.endswith("]"):
            continue  # the abstention, or cut by max_new_tokens before its citation
        span, n = a.answer.rsplit(" [", 1)
        assert span.strip() in a.retrieved[int(n.rstrip("]")) - 1]["text"], a.answer


def test_calibrate_stores_a_threshold_that_ask_then_applies(env: dict, tmp_path: Path) -> None:
    import shutil

    from rag_pipeline.eval.calibrate import CalibrateConfig, main as calibrate_main

    adapter = tmp_path / "adapter"
    shutil.copytree(env["adapter"], adapter)
    rows = [{"id": f"q{i}", "question": q, "answer": "zzz", "answerable": i % 2 == 0} for i, q in enumerate(QUESTIONS)]
    qa = write_jsonl(tmp_path / "dev.jsonl", rows)
    c = CalibrateConfig(adapter=str(adapter), index=str(env["index"]), qa=str(qa), max_false_abstain=1.0, max_new_tokens=6,
                        device="cpu", dtype="float32")
    assert calibrate_main(c) == 0
    stored = json.loads((adapter / "rag_pipeline.json").read_text())["abstention"]["free"]
    assert stored["questions"] == len(QUESTIONS) and stored["max_false_abstain"] == 1.0
    # no answer is right (gold "zzz"): with no ceiling the best rule abstains on every unanswerable question
    assert stored["overall_f1"] == pytest.approx(0.5) and stored["noans_acc"] == 1.0
    answers = A.Pipeline.load(cfg(env, adapter=str(adapter))).answer_batch(QUESTIONS)
    t = float(stored["threshold"])
    for row, a in zip(rows, answers):
        assert a.margin is not None and (a.abstain_reason == "calibration") == (a.margin > t and a.raw != ABSTAIN)
        if not row["answerable"]:
            assert a.abstained


# ------------------------------------------------------------------------------ the answer check


def scripted_generate(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch, free: str, grounded: str) -> list[bool]:
    """The generator answers ``free`` when decoding freely and ``grounded`` when decoding grounded; returns the modes seen."""
    modes: list[bool] = []

    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded_: bool = False, **_: object) -> list:
        modes.append(grounded_)
        return [(grounded if grounded_ else free, None)] * len(texts)

    monkeypatch.setattr(pipe, "_generate", gen)
    return modes


MOON = "What is the only natural satellite of Earth?"  # retrieves the Moon's document first


@pytest.mark.parametrize("free,grounded,shown,reason,fallback,question", [
    ("The [1]", "the Moon [1]", "the Moon [1]", None, "grounded", MOON),     # junk: the grounded span is shown instead
    ("The processes [1]", A.ABSTAIN, A.ABSTAIN, "no_content", None, MOON),   # ... unless the grounded decode abstains
    ("Jupiter and Saturn [1]", "The [1]", A.ABSTAIN, "unsupported", None, MOON),  # or is junk itself
    ("the Moon [1]", "never asked", "the Moon [1]", None, None, MOON),        # a supported answer is shown as it is
    ("Yes [1]", "never asked", "Yes [1]", None, None, "Is the Moon the only natural satellite of Earth?"),  # a yes/no answer
    ("Yes [1]", "the Moon [1]", "the Moon [1]", None, "grounded", MOON),      # ... but not to a question asking what
])
def test_the_answer_check_never_shows_junk(env: dict, monkeypatch: pytest.MonkeyPatch, free: str, grounded: str, shown: str,
                                           reason: str | None, fallback: str | None, question: str) -> None:
    pipe = A.Pipeline.load(cfg(env, answer_check="grounded", k=1))
    modes = scripted_generate(pipe, monkeypatch, free, grounded)
    ans = pipe.answer(question)
    assert ans.answer == shown and ans.abstain_reason == reason and ans.fallback == fallback
    assert (ans.rejected is not None) == (shown != free) and (ans.raw == free)
    assert modes == ([False, True] if shown != free else [False])  # the grounded decode runs only for a refused answer


def test_the_grounded_redecode_keeps_the_calls_decoding(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's settings (serve's max_tokens) hold for the answer check's second decode too."""
    pipe = A.Pipeline.load(cfg(env, answer_check="grounded", k=1))
    seen: list[tuple[bool, object]] = []

    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded_: bool = False, decoding=None, **_: object) -> list:
        seen.append((grounded_, decoding))
        return [("the Moon [1]" if grounded_ else "The [1]", None)] * len(texts)

    monkeypatch.setattr(pipe, "_generate", gen)
    asked = A.Decoding(5)
    assert pipe.answer_batch([MOON], decoding=asked)[0].fallback == "grounded"
    assert seen == [(False, asked), (True, asked)]


RUST = {"id": "r", "doc_id": "rust", "title": "Rust", "text": "Rust is a systems programming language focused on memory safety."}
MOON_DOC = {"id": "m", "doc_id": "moon", "title": "Moon", "text": "The Moon is the only natural satellite of Earth."}


def test_an_answer_from_the_passage_less_about_the_question_is_read_again_from_the_other(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reread``: "Rust [1]" cites the passage holding none of the question's words while the Moon's holds them; the
    question is answered again from the Moon's alone, and that answer's citation numbers the passage as first shown."""
    seen: list[int] = []
    first = ["Rust [1]"]  # the answer to the prompt with both passages

    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded_: bool = False, **_: object) -> list:
        seen.extend(len(d) for d in docs or [])
        return [(first[0] if len(d) == 2 else "the Moon [1]", None) for d in docs or []]

    on = A.Pipeline.load(cfg(env, answer_check="grounded"))
    monkeypatch.setattr(on, "_generate", gen)
    ans = on.answer_batch([MOON], contexts=[[RUST, MOON_DOC]])[0]
    assert (ans.answer, ans.rejected, ans.fallback, ans.raw) == ("the Moon [2]", "misread", "reread", "Rust [1]")
    assert [(c.n, c.doc_id) for c in ans.citations] == [(2, "moon")] and [d["doc_id"] for d in ans.retrieved] == ["rust", "moon"]
    assert seen == [2, 1]
    seen.clear()
    first[0] = "the Moon [1]"
    assert on.answer_batch([MOON], contexts=[[MOON_DOC, RUST]])[0].answer == "the Moon [1]" and seen == [2]  # cites the Moon's: stands
    first[0] = "Rust [1]"
    for off in (A.Pipeline.load(cfg(env, answer_check="grounded", reread="off")), A.Pipeline.load(cfg(env))):  # off; or streamed as decoded
        monkeypatch.setattr(off, "_generate", gen)
        seen.clear()
        assert off.answer_batch([MOON], contexts=[[RUST, MOON_DOC]])[0].answer == "Rust [1]" and seen == [2]


def test_renumber_maps_every_citation_and_drops_one_that_named_no_passage() -> None:
    assert A.renumber("the Moon [1] and [1, 2]; [3]", {1: 2, 2: 1}) == "the Moon [2] and [2, 1];"
    assert A.renumber("Lyon [2].", {1: 2}) == "Lyon." and A.renumber("Lyon [1, 2]", {1: 2}) == "Lyon [2]"


def test_first_numbers_follow_the_second_prompts_order() -> None:
    first = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert A.first_numbers(first, [{"id": "c"}, {"id": "a"}]) == {1: 3, 2: 1}  # --orders both may swap the second prompt


def test_a_reread_that_abstains_keeps_its_own_raw_and_the_higher_margin(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded_: bool = False, **_: object) -> list:
        return [("Rust [1]", -1.0) if len(d) == 2 else ("the Moon [1]", 0.5) for d in docs or []]

    pipe = A.Pipeline.load(cfg(env, answer_check="grounded"))
    monkeypatch.setattr(pipe, "_generate", gen)
    monkeypatch.setattr(pipe, "calibration_for", lambda *a, **k: {"threshold": 0.0})  # the second answer's margin is over it
    ans = pipe.answer_batch([MOON], contexts=[[RUST, MOON_DOC]])[0]
    assert (ans.abstained, ans.abstain_reason, ans.raw, ans.margin, ans.rejected, ans.fallback) == \
        (True, "calibration", "the Moon [1]", 0.5, "misread", None)
    assert [d["doc_id"] for d in ans.retrieved] == ["rust", "moon"] and not ans.citations


def test_a_scored_answer_falls_back_to_a_span_with_the_abstention_ruled_out(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the null margin decided to answer (calibrated, or calibrate's scoring), a junk answer's grounded decode
    rules the abstention out too: the best span of a shown passage is shown, with the first decode's margin."""
    pipe = A.Pipeline.load(cfg(env, answer_check="grounded", k=1))
    seen: list[tuple[bool, bool]] = []

    def gen(texts: list[str], docs: list | None = None, margins: bool = False, grounded_: bool = False, **_: object) -> list:
        seen.append((margins, grounded_))
        return [("the Moon [1]" if grounded_ else "The [1]", 0.5 if grounded_ else -1.5)] * len(texts)

    monkeypatch.setattr(pipe, "_generate", gen)
    ans = pipe.answer_batch(["What is the only natural satellite of Earth?"], margins=True)[0]
    assert (ans.answer, ans.fallback, ans.rejected, ans.margin, ans.raw) == ("the Moon [1]", "grounded", "no_content", -1.5, "The [1]")
    assert seen == [(True, False), (True, True)]
    seen.clear()
    greedy = pipe.answer_batch(["What is the only natural satellite of Earth?"])[0]  # greedy abstention: the grounded decode may abstain
    assert greedy.fallback == "grounded" and seen == [(False, False), (False, True)]


def test_answer_check_abstain_and_off(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = A.Pipeline.load(cfg(env, answer_check="abstain", k=1))
    modes = scripted_generate(pipe, monkeypatch, "The [1]", "the Moon [1]")
    ans = pipe.answer("What is the only natural satellite of Earth?")
    assert (ans.answer, ans.abstain_reason, ans.rejected, modes) == (A.ABSTAIN, "no_content", "no_content", [False])
    assert "holds no content word" in A.format_answer(ans, pipe.cfg)
    off = A.Pipeline.load(cfg(env, answer_check="off", k=1))
    scripted_generate(off, monkeypatch, "The [1]", "the Moon [1]")
    assert off.answer("What is the only natural satellite of Earth?").answer == "The [1]"


def test_questions_to_a_terminal_are_readable_with_their_gold_answers(env: dict, pipe: A.Pipeline, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """ask --questions FILE --limit N without --output or --json: the first N questions, each with its
    answer, its sources and its gold answer, as text (the quick start's last step)."""
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": q, "answer": [f"gold{i}"]} for i, q in enumerate(QUESTIONS)]
                     + [{"id": "u", "question": "Who is the king of the Moon?", "answerable": False}])
    monkeypatch.setattr(A.Pipeline, "load", classmethod(lambda cls, _cfg: pipe))
    fake_generate(pipe, monkeypatch, "the Moon [1]")
    assert A.main(cfg(env, questions=str(qa), limit=2)) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 2 and f"Q: {QUESTIONS[0]}\nA: the Moon [1]" in out and "gold: gold0" in out and "gold: gold1" in out
    assert "Sources:" in out and QUESTIONS[2] not in out
    assert A.main(cfg(env, questions=str(qa), limit=0)) == 0
    assert "gold: (unanswerable: abstaining is right)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="give --questions FILE"):
        cfg(env, limit=3)


# ------------------------------------------------------------------------ the prompt's passages (--passages)

# Documents of several sentences (one chunk each), for sentence windows.
STORIES = {
    "etna": ("Volcanoes", "Magma rises from deep below the crust. Lava can flow for many kilometres. Ash clouds can stop flights. "
                          "Mount Etna in Sicily erupts almost every year. Scientists watch it with seismometers."),
    "sicily": ("Sicily", "Sicily is the largest island in the Mediterranean. Its capital is Palermo. Farmers grow lemons and olives on "
                         "its hills. Ferries cross the strait to the mainland every hour. Greek temples stand near Agrigento."),
    "glacier": ("Glaciers", "Glaciers are rivers of slow ice. They carve deep valleys as they move. The Aletsch Glacier is the largest "
                            "in the Alps. Melting glaciers raise the level of the sea. Ice cores record the climate of the past."),
    "desert": ("Deserts", "Deserts receive very little rain. The Sahara is the largest hot desert. Camels store fat in their humps. "
                          "Cacti keep water in thick stems. Nights in deserts can be very cold."),
}


@pytest.fixture(scope="module")
def stories_index(env: dict) -> Path:
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.embed import HashingEmbedder

    docs = write_jsonl(env["root"] / "stories.jsonl", [{"id": k, "title": t, "text": x} for k, (t, x) in STORIES.items()])
    index = env["root"] / "stories-idx"
    build_index(IndexConfig(paths=[str(docs)], index=str(index), embedder="hashing:64"), embedder=HashingEmbedder(64, 64))
    return index


def with_settings(pipe: A.Pipeline, **kw) -> A.Pipeline:
    """``pipe`` (its models and retriever) with other answering settings."""
    out = copy.copy(pipe)
    out.cfg, out._idf = dataclasses.replace(pipe.cfg, **kw), None
    return out


def search_spy(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch, reverse: bool = False) -> list[int]:
    """Record the depth of each search of ``pipe``'s retriever; ``reverse``: hand its hits back worst first."""
    search, depths = pipe.retriever.search_with_cosine, []

    def spy(questions: list[str], k: int = 5, hybrid: bool = False, timings: object = None) -> tuple[list, list]:
        depths.append(k)
        hits, cosines = search(questions, k, hybrid, timings)
        if reverse:
            hits = [[dataclasses.replace(h, rank=r) for r, h in enumerate(reversed(hs), 1)] for hs in hits]
        return hits, cosines

    monkeypatch.setattr(pipe.retriever, "search_with_cosine", spy)
    return depths


def test_default_passages_are_the_top_k_chunks_and_build_no_word_weights(pipe: A.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """--passages chunks (the default) searches k deep and shows the top k chunks whole, as ask always has: the prompts and
    answers equal those built by hand from the retriever's top k; the index's word weights are never built."""
    from rag_pipeline.generator import generate_answers

    assert pipe.cfg.passages == "chunks"
    monkeypatch.setattr(focus.Idf, "of", classmethod(lambda cls, texts: pytest.fail("word weights built for --passages chunks")))
    depths = search_spy(pipe, monkeypatch)
    answers = pipe.answer_batch(QUESTIONS[:3])
    assert depths == [pipe.cfg.k] and pipe._idf is None
    top = [[{**h.to_dict(), "truncated": False} for h in hs] for hs in pipe.retriever.search_batch(QUESTIONS[:3], pipe.cfg.k, True)]
    assert [a.retrieved for a in answers] == top
    texts = [pipe._model_text(render_user(pipe.template, q, docs)) for q, docs in zip(QUESTIONS, top)]
    assert [a.raw for a in answers] == generate_answers(pipe.model, pipe.tokenizer, "causal", texts, max_new_tokens=8)


def test_passages_rerank_shows_the_candidates_holding_the_questions_words(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """--passages rerank searches --candidates deep and shows the k of them holding most of the question's words, whole, best
    first: here the search hands the Moon's chunk back last, and the prompt shows it first and cites it. The word weights
    are built once, on the first answer (not at load)."""
    built: list[int] = []
    of = focus.Idf.of
    monkeypatch.setattr(focus.Idf, "of", classmethod(lambda cls, texts: built.append(1) or of(texts)))
    p = A.Pipeline.load(cfg(env, k=2, passages="rerank", candidates=5))
    assert built == [] and "passages rerank over the top 5" in p.description
    depths = search_spy(p, monkeypatch, reverse=True)
    calls = fake_generate(p, monkeypatch, "the Moon [1]")
    ans = p.answer(QUESTIONS[0])
    assert depths == [5] and built == [1]
    assert [d["doc_id"] for d in ans.retrieved][0] == "moon" and ans.retrieved[0]["rank"] == 5 and len(ans.retrieved) == 2
    whole = {h.chunk.id: h.chunk.text for h in p.retriever.search(QUESTIONS[0], 5, hybrid=True)}
    assert all(d["text"] == whole[d["id"]] and not d["truncated"] for d in ans.retrieved)  # whole chunks
    assert (ans.citations[0].doc_id, ans.citations[0].chunk_id) == ("moon", ans.retrieved[0]["id"])
    assert calls[0][0].index(ans.retrieved[0]["text"]) < calls[0][0].index(ans.retrieved[1]["text"])
    p.answer(QUESTIONS[1])
    assert built == [1]  # built once


def test_passages_windows_cut_the_candidates_to_sentences_within_the_words_of_k_chunks(env: dict, stories_index: Path,
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--passages windows shows the sentences of the top --candidates that best match the question, each with its neighbours,
    within the words the top k chunks would take; a cut passage says so (``truncated``) and keeps its id and title."""
    p = A.Pipeline.load(cfg(env, index=str(stories_index), k=1, passages="windows", candidates=3))
    calls = fake_generate(p, monkeypatch, "Mount Etna [1]")
    question = "Which volcano in Sicily erupts almost every year?"
    ans = p.answer(question)
    chunks = {h.chunk.id: h.chunk for h in p.retriever.search(question, 3, hybrid=True)}
    budget = len(p.retriever.search(question, 1, hybrid=True)[0].chunk.text.split())
    assert sum(len(d["text"].split()) for d in ans.retrieved) <= budget
    assert "Mount Etna in Sicily erupts almost every year." in ans.retrieved[0]["text"] and ans.retrieved[0]["doc_id"] == "etna"
    assert any(d["truncated"] for d in ans.retrieved)
    for d in ans.retrieved:
        whole = chunks[d["id"]]
        assert d["title"] == whole.title and all(piece in whole.text for piece in d["text"].split(focus.GAP))
        assert d["truncated"] == (d["text"] != whole.text) and d["text"] in calls[0][0]
    assert ans.citations[0].chunk_id == ans.retrieved[0]["id"]


@pytest.mark.parametrize("passages", ["rerank", "windows"])
def test_passages_leave_the_threshold_as_it_was(env: dict, stories_index: Path, passages: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrieval threshold reads the same best dense cosine and the same top k chunks whatever --passages shows."""
    p = A.Pipeline.load(cfg(env, index=str(stories_index), k=1, min_score=0.99))
    chosen = with_settings(p, passages=passages, candidates=4)
    questions = ["Which volcano in Sicily erupts almost every year?", "zebra quantum saxophone"]
    _, best, top = p._retrieve(questions)
    _, best2, top2 = chosen._retrieve(questions)
    assert (best2, top2) == (best, top) and len(top[0]) == 1
    seen: list[list[str]] = []
    monkeypatch.setattr(A, "word_share", lambda question, texts: seen.append(texts) or 0.0)
    assert [a.abstain_reason for a in chosen.answer_batch(questions)] == ["threshold", "threshold"]
    assert seen == top  # the words are looked for in the top k chunks, not in the passages chosen


def test_a_question_without_content_words_is_judged_by_the_cosine_alone(env: dict, stories_index: Path) -> None:
    """Its word share was 1.0, over any --min-score-words: "???" or "Is it?" never met the retrieval threshold."""
    p = A.Pipeline.load(cfg(env, index=str(stories_index), k=1, min_score=0.99))
    assert [a.abstain_reason for a in p.answer_batch(["???", "Is it?"])] == ["threshold", "threshold"]


def test_bad_candidates_is_refused_by_the_cli(env: dict, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(["ask", "q?", "--index", str(env["index"]), "--passages", "windows", "-k", "3", "--candidates", "2"], capsys)
    assert "candidates is 2" in err and "--candidates 3 or more" in err
    assert cfg(env, k=6).candidates == 5  # --passages chunks reads no candidates: any k is fine


# ------------------------------------------------------------------------------ JSON answers (--schema)

PERSON = {"type": "object", "properties": {"creator": {"type": ["string", "null"]}, "year": {"type": ["integer", "null"]}},
          "required": ["creator", "year"], "additionalProperties": False}


def test_a_json_answer_is_decoded_under_the_schema_end_to_end(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import jsonschema

    schema = tmp_path / "person.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"colour": {"enum": ["red", "blue"]},
                                  "n": {"type": "integer", "minimum": 0, "maximum": 9}},
                                  "required": ["colour", "n"], "additionalProperties": False}))
    argv = ["ask", QUESTIONS[1], "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--json", "--device", "cpu",
            "--min-score", "-1", "--task", "extract", "--schema", str(schema), "--max-json-tokens", "40"]
    assert cli_main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["json_error"] is None and json.loads(data["answer"]) == data["data"]  # the tiny model's random answer still parses
    jsonschema.validate(data["data"], json.loads(schema.read_text()))
    assert data["abstained"] is False and data["margin"] is None and data["json_cut"] is False  # short: it finished
    note = tmp_path / "note.json"  # a free string: the tiny model runs on until the decoder closes the object
    note.write_text(json.dumps({"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}))
    argv[argv.index(str(schema))] = str(note)
    assert cli_main(argv[:-1] + ["24"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["json_error"] is None and isinstance(data["data"]["note"], str) and data["json_cut"] is True
    assert cli_main([a for a in argv[:-1] if a != "--json"] + ["24"]) == 0
    assert "closed at the token limit: its last value is cut short" in capsys.readouterr().out
    from rag_pipeline.answer import structured

    p = A.Pipeline.load(cfg(env))
    nullable = structured.canonical({"type": "object", "properties": {"answer": {"type": ["string", "null"]}}, "required": ["answer"]})
    with pytest.raises(InputError, match=r"leaves no room for an answer beside the null margin's null object \{\"answer\":null\}"):
        p.answer_batch([QUESTIONS[1]], margins=True, decoding=A.Decoding(8, task="extract", json_schema=nullable))


def test_a_json_answer_is_asked_with_its_schema_and_traced_to_the_passages(env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(PERSON))
    p = A.Pipeline.load(cfg(env, task="extract", schema=str(tmp_path / "s.json"), answer_check="grounded", min_score=0.99))
    seen: list = []

    def gen(texts, docs, margins=False, grounded=False, decoding=None, **kw):
        seen.append((texts, decoding))
        return [('{"creator":"Guido van Rossum","year":1989}', None)] * len(texts)

    monkeypatch.setattr(p, "_generate", gen)
    ans = p.answer(QUESTIONS[1])
    texts, decoding = seen[0]
    assert "Answer with one JSON object that follows this JSON schema" in texts[0] and '"creator"' in texts[0]
    assert decoding is None and p.decoding.schema == PERSON and p.decoding.max_new_tokens == p.cfg.max_json_tokens
    assert not ans.abstained  # no retrieval threshold (min_score 0.99), no answer check, no calibration: null is the abstention
    assert ans.data == {"creator": "Guido van Rossum", "year": 1989}
    python = next(n for n, d in enumerate(ans.retrieved, 1) if "Guido" in d["text"])
    assert ans.fields == {"creator": [python]} and ans.unsupported_fields == ["year"]  # 1989 is in no passage (1991 is)
    assert [c.n for c in ans.citations] == [python] and "Guido" in ans.citations[0].snippet
    text = A.format_answer(ans, cfg(env))
    assert f"creator: [{python}]" in text and "year: (no shown passage holds this value)" in text


def test_a_cut_json_answer_says_why(env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(PERSON))
    p = A.Pipeline.load(cfg(env, task="extract", schema=str(tmp_path / "s.json")))
    monkeypatch.setattr(p, "_generate", lambda texts, *a, **kw: [('{"creator":"Guido', None)] * len(texts))
    ans = p.answer(QUESTIONS[1])
    assert ans.data is None and "token limit" in ans.json_error and ans.fields == {}
    assert "raise --max-json-tokens" in A.format_answer(ans, cfg(env))


def test_bad_schemas_are_one_line_errors_before_the_models_load(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "strin"}}}))
    base = ["ask", QUESTIONS[0], "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--device", "cpu", "--task", "extract"]
    assert "not a valid JSON schema at properties/x" in _one_line_error(base + ["--schema", str(bad)], capsys)
    assert "does not exist" in _one_line_error(base + ["--schema", str(tmp_path / "none.json")], capsys)
    with pytest.raises(ConfigError, match="--task extract and --grounded"):
        cfg(env, task="extract", grounded=True)
    with pytest.raises(ConfigError, match="pass --task extract --schema"):
        cfg(env, schema="object")
    from rag_pipeline.adapter_meta import AdapterMeta
    from rag_pipeline.answer import structured

    assert A.answer_schema(cfg(env, task="extract"), None, None) is structured.JSON_OBJECT  # any JSON object unless a schema is given
    own = {"type": "object", "properties": {"date": {"type": ["string", "null"]}}, "required": ["date"]}
    trained = AdapterMeta(base_model="m", extract_schema=own)  # train-generator copies its dataset's extract_schema
    assert A.answer_schema(cfg(env, task="extract"), trained, "a") == own  # the adapter's own schema by default
    assert A.answer_schema(cfg(env, task="extract", schema="object"), trained, "a") is structured.JSON_OBJECT  # --schema wins
    assert A.answer_schema(cfg(env), trained, "a") is None
    with pytest.raises(InputError, match="extract_schema of adapter a"):
        A.answer_schema(cfg(env, task="extract"), AdapterMeta(base_model="m", extract_schema={"type": "array"}), "a")


def test_the_committed_task_adapter_answers_json_in_the_form_it_learned_and_is_calibrated_for_each_task(env: dict) -> None:
    """adapters/smollm2-disfl-qa-tasks: its JSON answers default to the rule-written targets' schema, the one its
    extract abstention was calibrated under, and it holds a calibrated abstention for every task it learned."""
    from rag_pipeline.adapter_meta import read_adapter_meta
    from rag_pipeline.data import tasks

    adapter = Path(__file__).resolve().parents[1] / "adapters" / "smollm2-disfl-qa-tasks"
    meta = read_adapter_meta(adapter)
    assert A.answer_schema(cfg(env, task="extract"), meta, str(adapter)) == tasks.EXTRACT_SCHEMA
    assert meta.tasks == {"qa": 0.5, "summary": 0.25, "extract": 0.25}
    assert set(meta.abstention) == {"free", "summary", "extract"} and all(a["threshold"] > 0 for a in meta.abstention.values())


# ------------------------------------------------------------------------------ summaries (--task summary)


def test_a_summary_is_decoded_as_cited_sentences_end_to_end(env: dict, capsys: pytest.CaptureFixture) -> None:
    from rag_pipeline.answer import summary

    argv = ["ask", QUESTIONS[1], "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--json", "--device", "cpu",
            "--min-score", "-1", "--task", "summary", "--max-summary-tokens", "60", "--do-sample", "--seed", "1"]
    assert cli_main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["raw"] and not data["abstained"] and "fields" not in data
    text = data["raw"].strip()  # the tiny model's random tokens, under the grammar: cited sentences only (a cut one at the end)
    done = text[: text.rfind(".") + 1]
    assert data["answer"] == text and (data["summary_error"] is None) == (done == text)  # a cut sentence is named
    assert re.fullmatch(r'(?:[A-Z0-9"\'][^\[\]\n.!?]{2,300} \[[12]\](?: \[[12]\])?\. ?){0,4}', done), text
    rest = text[len(done):].strip()  # one unfinished sentence, cut by the token limit
    assert re.fullmatch(r'(?:[A-Z0-9"\'][^\[\]\n.!?]*(?:\[[12]?\]?(?: \[?[12]?\]?)?)?)?', rest), text
    assert [(s["text"], s["cited"]) for s in data["sentences"]] == summary.sentences_of(text)


def test_a_grounded_summary_copies_each_sentence_from_the_passage_it_cites(env: dict, capsys: pytest.CaptureFixture) -> None:
    from rag_pipeline.answer import summary

    argv = ["ask", QUESTIONS[1], "--index", str(env["index"]), "--adapter", str(env["adapter"]), "--json", "--device", "cpu",
            "--min-score", "-1", "--task", "summary", "--grounded", "--max-summary-tokens", "60", "--do-sample", "--seed", "3"]
    assert cli_main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    shown = [d["text"] for d in data["retrieved"]]
    said = summary.sentences_of(summary.complete_part(data["raw"]))
    assert data["abstained"] or said, data["raw"]
    assert all(len(cited) == 1 and text in shown[cited[0] - 1] for text, cited in said), data["raw"]  # copied from what it cites
    assert all(s["supported"] for s in data.get("sentences") or []), data["raw"]


def test_a_summary_is_asked_for_and_its_citations_are_checked(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    p = A.Pipeline.load(cfg(env, task="summary", answer_check="grounded"))
    seen: list = []

    def gen(texts, docs, margins=False, grounded=False, decoding=None, **kw):
        seen.append(texts)
        python = next(n for n, d in enumerate(docs[0], 1) if "Guido" in d["text"])
        return [(f"Python was created by Guido van Rossum [{python}]. It orbits the Moon every month [{python}].", None)] * len(texts)

    monkeypatch.setattr(p, "_generate", gen)
    ans = p.answer(QUESTIONS[1])
    assert "Summarize what the documents say about: Who created" in seen[0][0]
    python = ans.citations[0].n
    assert [(s["text"], s["cited"], s["supported"], s["precise"]) for s in ans.sentences] == [
        ("Python was created by Guido van Rossum", [python], True, [True]),
        ("It orbits the Moon every month", [python], False, [False])]
    assert "sentence 2: the passages it cites do not hold most of its words" in A.format_answer(ans, cfg(env))
    assert "sentences" not in A.Pipeline.load(cfg(env)).answer(QUESTIONS[1]).to_dict()  # a short answer has none


def test_margins_are_decoded_with_the_answer_start_their_calibration_was_made_with(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_pipeline import generator

    seen: list = []
    real = generator.generate_with_margins

    def spy(*args, **kw):
        seen.append(kw["ban_first_word"])
        return real(*args, **kw)

    monkeypatch.setattr(generator, "generate_with_margins", spy)
    p = A.Pipeline.load(cfg(env, min_score=-1.0, answer_check="off"))
    p.calibrations = {"free": {"threshold": 0.0, "answer_start": "not-refusal-word"}, "grounded": {"threshold": 0.0}}
    p.answer_batch([QUESTIONS[0]], margins=True)
    p.answer_batch([QUESTIONS[0]], margins=True, grounded=True)
    assert seen == [True, False]


def test_fast_kernels_pack_a_bf16_generator_and_give_the_plain_answers(env: dict) -> None:
    from rag_pipeline import inference

    if not inference.packing_available():
        pytest.skip("this torch has no oneDNN packed linear")
    fast = A.Pipeline.load(cfg(env, dtype="bfloat16", kernels="fast", max_new_tokens=6))
    plain = A.Pipeline.load(cfg(env, dtype="bfloat16", kernels="plain", max_new_tokens=6))
    assert "oneDNN-packed bf16 weights" in fast.description and "oneDNN" not in plain.description
    assert fast._static_cache() and not plain._static_cache()
    assert not any(type(m) is torch.nn.Linear for m in fast.model.modules())
    assert any(type(m) is torch.nn.Linear for m in plain.model.modules())
    # the tiny adapter's bf16 logits are far from ties: the preallocated cache's last bits decide nothing here
    assert [a.answer for a in fast.answer_batch(QUESTIONS)] == [a.answer for a in plain.answer_batch(QUESTIONS)]


def test_greedy_answers_decode_on_an_engine_that_checks_prompt_lookups_guesses(env: dict) -> None:
    """--kernels fast on a CPU: greedy answers (and margins) come from the pipeline's own engine, checking --draft-tokens
    guesses a step, with generate's answers (--draft-tokens 0): a question alone on an engine of one row, a batch on one
    of batch_size rows (evaluate's last chunk of one on the one-row engine). Sampling decodes with generate."""
    from rag_pipeline import batching

    drafted = A.Pipeline.load(cfg(env, max_new_tokens=10, batch_size=4))
    generated = A.Pipeline.load(cfg(env, max_new_tokens=10, batch_size=4, draft_tokens=0))
    for margins in (False, True):
        for size in (1, 3):
            got = [a for i in range(0, len(QUESTIONS), size) for a in drafted.answer_batch(QUESTIONS[i:i + size], margins=margins)]
            want = [a for i in range(0, len(QUESTIONS), size) for a in generated.answer_batch(QUESTIONS[i:i + size], margins=margins)]
            assert [a.raw for a in got] == [a.raw for a in want]
            assert [a.margin for a in got] == pytest.approx([a.margin for a in want], abs=1e-3)
    assert sorted(drafted._own_engines) == [1, 4]
    for rows, engine in drafted._own_engines.items():
        assert isinstance(engine, batching.DecodeEngine) and engine.max_rows == rows and engine.stats.steps > 0
        assert engine.draft_tokens == drafted.cfg.draft_tokens == 4
    assert drafted._own_engines[4].stats.largest > 1  # a batch's rows decoded together
    assert generated._own_engines == {}
    sampled = A.Pipeline.load(cfg(env, do_sample=True))
    sampled.answer(QUESTIONS[0])
    assert sampled._own_engines == {}
    with pytest.raises(ConfigError, match="draft_tokens"):
        cfg(env, draft_tokens=-1)
