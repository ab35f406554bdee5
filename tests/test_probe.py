"""The answerability probe (rag_pipeline.answer.probe, ask --abstain-probe): its file, its checks, and what ask does with it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from rag_pipeline.adapter_meta import read_adapter_meta, write_adapter_meta
from rag_pipeline.answer import ask as A
from rag_pipeline.answer import probe as P
from rag_pipeline.errors import ConfigError

QUESTIONS = ["Which volcano in Sicily erupts almost every year?", "Who wrote the first computer program?"]
THRESHOLD = 1e9  # the adapter's calibrated margin threshold withholds nothing: the probe alone decides
NEVER = {"free": {"threshold": THRESHOLD}}


@pytest.fixture()
def adapter(env: dict, tmp_path: Path) -> Path:
    """A copy of the tiny adapter with a calibrated abstention for free short answers."""
    out = tmp_path / "adapter"
    shutil.copytree(env["adapter"], out)
    meta = read_adapter_meta(out)
    write_adapter_meta(out, dataclasses.replace(meta, abstention={"free": {"threshold": THRESHOLD, "yes_no_questions": 0}}))
    return out


@pytest.fixture(scope="module")
def shape(env: dict) -> tuple[int, int]:
    config = json.loads((Path(env["base"]) / "config.json").read_text(encoding="utf-8"))
    return config["hidden_size"], config["num_hidden_layers"]


def write_probe(adapter: Path, shape: tuple[int, int], intercept: float, cutoff: float = 0.0, coef=None, layer: int = 1,
                yes_no: int = 0, changes: dict | None = None, readings: tuple | None = None) -> P.Probe:
    readings = readings or ((layer, "last"),)
    size = shape[0] * len(readings)
    rng = np.random.default_rng(0)
    p = P.Probe(readings, rng.normal(size=size), rng.uniform(0.5, 2.0, size), np.zeros(size) if coef is None else coef, intercept,
                cutoff, yes_no, P.weights_sha256(adapter), THRESHOLD)
    (adapter / P.FILE).write_text(json.dumps({**p.to_json({"fitted_on": {"questions": 2}}), **(changes or {})}), encoding="utf-8")
    return p


def cfg(env: dict, path: Path, **kw) -> A.AskConfig:
    return A.AskConfig(**{"index": str(env["index"]), "adapter": str(path), "device": "cpu", "dtype": "float32", "max_new_tokens": 4,
                          "min_score": -1.0, "answer_check": "off", "abstain_probe": True, **kw})


def test_the_file_round_trips_and_scores_a_state_by_its_formula(adapter: Path, shape) -> None:
    coef = np.linspace(-1, 1, shape[0])
    p = write_probe(adapter, shape, 0.25, cutoff=0.5, coef=coef)
    back = P.read(adapter)
    P.check(back, adapter, "causal", *shape, THRESHOLD)
    state = np.arange(shape[0], dtype=np.float32)
    assert back.score(state) == pytest.approx(float(((state - p.mean) / p.scale) @ coef + 0.25))
    assert (back.readings, back.cutoff, back.yes_no_questions) == (((1, "last"),), 0.5, 0)


def test_a_first_format_file_reads_as_its_layers_last_token(adapter: Path, shape) -> None:
    """Format 1 (one layer, the prompt's last token) is still read: as the reading (layer, "last")."""
    p = write_probe(adapter, shape, 0.25)
    d = json.loads((adapter / P.FILE).read_text(encoding="utf-8"))
    d = {**{k: v for k, v in d.items() if k != "readings"}, "format": 1, "layer": 1}
    (adapter / P.FILE).write_text(json.dumps(d), encoding="utf-8")
    back = P.read(adapter)
    P.check(back, adapter, "causal", *shape, THRESHOLD)
    assert back.readings == ((1, "last"),) and not P.pooled(back.readings) and back.score(p.mean) == pytest.approx(0.25)


def test_readings_parse_from_flags_and_name_what_is_wrong() -> None:
    assert P.parse_readings("18:last, 18:question") == ((18, "last"), (18, "question"))
    assert P.describe(((18, "last"), (18, "question"))) == "18:last,18:question"
    for bad in ("18", "18:mean", "x:last"):
        with pytest.raises(ValueError, match="is not LAYER:POOL"):
            P.parse_readings(bad)
    with pytest.raises(ValueError, match="name one reading twice"):
        P.parse_readings("18:last,18:last")


@pytest.mark.parametrize("change, message", [
    ({"format": 3}, "is not an answerability probe"),
    ({"readings": [{"layer": 1, "pool": "mean"}]}, "is not an answerability probe"),
    ({"readings": []}, "is not an answerability probe"),
    ({"readings": [{"layer": 1, "pool": "last"}, {"layer": 1, "pool": "last"}]}, "is not an answerability probe"),
    ({"readings": [{"layer": 1.5, "pool": "last"}]}, "is not an answerability probe"),
    ({"coef": 1.0}, "is not an answerability probe"),
    ({"margin_threshold": None}, "is not an answerability probe"),
    ({"coef": [1.0]}, "reads a state of size 1"),
    ({"readings": [{"layer": 99, "pool": "last"}]}, "from 99:last"),
    ({"readings": [{"layer": 1, "pool": "last"}, {"layer": 1, "pool": "question"}]}, "2 such readings are of size"),
    ({"cutoff": float("nan")}, "non-finite"),
    ({"intercept": float("inf")}, "non-finite"),
    ({"weights_sha256": "0" * 64}, "fitted on other weights"),
    ({"margin_threshold": 2.5}, "chosen beside the margin threshold 2.5000; the adapter's is now"),
])
def test_a_bad_or_stale_probe_is_refused_with_the_fix(adapter: Path, shape, change: dict, message: str) -> None:
    write_probe(adapter, shape, 0.0, changes=change)
    with pytest.raises(ConfigError, match=message) as e:
        P.check(P.read(adapter), adapter, "causal", *shape, THRESHOLD)
    assert "hidden_state_probe.py --save" in str(e.value)


def test_a_file_that_is_not_an_object_and_a_model_it_does_not_fit_are_refused(adapter: Path, shape) -> None:
    (adapter / P.FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not an answerability probe"):
        P.read(adapter)
    p = write_probe(adapter, shape, 0.0)
    with pytest.raises(ConfigError, match="reads a causal generator's prompt"):
        P.check(p, adapter, "seq2seq", *shape, THRESHOLD)
    with pytest.raises(ConfigError, match="does not have for free short answers: run rag-pipeline calibrate"):
        P.check(p, adapter, "causal", *shape, None)


def test_asking_for_the_probe_without_one_or_where_it_does_not_apply_is_refused(env: dict, adapter: Path, monkeypatch) -> None:
    monkeypatch.setattr(A.generator, "load_generator", lambda *a, **k: pytest.fail("the file is checked before the model loads"))
    with pytest.raises(ConfigError, match="does not exist.*--save"):
        A.Pipeline.load(cfg(env, adapter))
    with pytest.raises(ConfigError, match="pass --adapter"):
        cfg(env, adapter, adapter="", no_adapter=True)
    for setting, named in (({"grounded": True}, "--grounded"), ({"abstention": "greedy"}, "--abstention greedy"),
                           ({"task": "summary"}, "--task summary")):
        with pytest.raises(ConfigError, match=f"withholds free short answers beside the calibrated abstention.*not with {named}"):
            cfg(env, adapter, **setting)


def test_a_question_the_probe_scores_above_its_cutoff_is_not_generated(env: dict, adapter: Path, shape) -> None:
    write_probe(adapter, shape, intercept=1.0)  # every prompt scores 1.0, above the cutoff 0
    pipe = A.Pipeline.load(cfg(env, adapter))
    assert "answerability probe (1:last, cutoff 0.00)" in pipe.description
    pipe.calibrations = NEVER
    for ans in pipe.answer_batch(QUESTIONS):
        assert (ans.abstained, ans.abstain_reason, ans.raw, ans.margin, ans.probe) == (True, "probe", "", None, 1.0)
        assert ans.answer == A.ABSTAIN and ans.retrieved  # the passages it was shown are kept
    shown = A.format_answer(ans, cfg(env, adapter))
    assert "answerability probe scores the question 1.00, above its cutoff" in shown and "drop --abstain-probe" in shown
    pipe.calibrations = {}  # no calibrated abstention (greedy): nor the probe, whose cutoff was chosen beside one
    assert [a.probe for a in pipe.answer_batch(QUESTIONS)] == [None, None]
    pipe.calibrations = {"free": NEVER["free"], "grounded": NEVER["free"]}
    assert [a.abstain_reason for a in pipe.answer_batch(QUESTIONS, grounded=True)] == [None, None]  # grounded: a copied span
    given = [[{"text": "Etna erupts almost every year."}]] * 2  # passages given, not retrieved (evaluate's oracle): not probed
    assert [a.probe for a in pipe.answer_batch(QUESTIONS, contexts=given)] == [None, None]


def test_probe_bias_moves_the_cutoff_and_needs_the_probe(env: dict, adapter: Path, shape) -> None:
    """--probe-bias B holds a question when its score is above cutoff + B; without --abstain-probe, or not finite, it is
    refused."""
    write_probe(adapter, shape, intercept=1.0)  # every prompt scores 1.0; the cutoff is 0
    for bias, held in ((0.99, True), (1.01, False), (-5.0, True)):
        pipe = A.Pipeline.load(cfg(env, adapter, probe_bias=bias))
        pipe.calibrations = NEVER
        assert [a.abstain_reason == "probe" for a in pipe.answer_batch(QUESTIONS)] == [held, held], bias
        assert f"cutoff 0.00 + bias {bias})" in pipe.description
    with pytest.raises(ConfigError, match="--probe-bias 0.5 moves the answerability probe's cutoff: add --abstain-probe"):
        cfg(env, adapter, abstain_probe=False, probe_bias=0.5)
    with pytest.raises(ConfigError, match="give a finite number"):
        cfg(env, adapter, probe_bias=float("nan"))


def test_the_probes_reading_counts_in_the_prompt_tokens_of_the_usage(env: dict, adapter: Path, shape) -> None:
    """A held question read its prompt once (the probe's pass) and decoded nothing; one answered read it twice."""
    write_probe(adapter, shape, intercept=1.0)
    lengths = None
    for bias, passes in ((0.0, 1), (5.0, 2)):
        pipe = A.Pipeline.load(cfg(env, adapter, probe_bias=bias))
        pipe.calibrations = NEVER
        lengths = lengths or [len(ids) for ids in pipe.prompt_ids(QUESTIONS)]
        usage = {}
        answers = pipe.answer_batch(QUESTIONS, on_usage=lambda i, u: usage.__setitem__(i, u))
        assert [usage[i].prompt_tokens for i in range(2)] == [passes * n for n in lengths], bias
        assert all((usage[i].completion_tokens == 0) == (a.abstain_reason == "probe") for i, a in enumerate(answers)), bias


def test_below_the_cutoff_the_answer_is_generated_and_carries_its_score(env: dict, adapter: Path, shape) -> None:
    coef = np.random.default_rng(1).normal(size=shape[0])
    p = write_probe(adapter, shape, intercept=-1e6, coef=coef, layer=2)  # far below: nothing held
    pipe = A.Pipeline.load(cfg(env, adapter))
    pipe.calibrations = NEVER
    plain = A.Pipeline.load(cfg(env, adapter, abstain_probe=False))
    plain.calibrations = NEVER
    answers, before = pipe.answer_batch(QUESTIONS), plain.answer_batch(QUESTIONS)
    assert [a.raw for a in answers] == [b.raw for b in before] and [a.margin for a in answers] == [b.margin for b in before]
    with torch.no_grad():  # the score is the probe's of the prompt's last hidden state after its layer, as ask builds the prompt
        states = [pipe.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, -1].numpy()
                  for ids in pipe.prompt_ids(QUESTIONS)]
    assert all(x.timings["prompt"] > y.timings["prompt"] for x, y in zip(answers, before))  # the reading's time counts
    assert [a.probe for a in answers] == pytest.approx([p.score(s) for s in states])
    assert all(b.probe is None for b in before)


def test_a_probe_fitted_on_no_yes_no_question_does_not_hold_one(env: dict, adapter: Path, shape, monkeypatch) -> None:
    """As with the margin's threshold: a yes/no question whose answer opens with yes or no is exempt from a probe measured
    on none; a probe fitted with some holds it like any other."""
    for yes_no, held in ((0, [False, True]), (11, [True, True])):
        write_probe(adapter, shape, intercept=1.0, yes_no=yes_no)
        pipe = A.Pipeline.load(cfg(env, adapter))
        pipe.calibrations = NEVER
        monkeypatch.setattr(pipe, "opens_yes_no", lambda q: q == QUESTIONS[0])
        assert [a.abstain_reason == "probe" for a in pipe.answer_batch(QUESTIONS)] == held, yes_no


def test_evaluate_gives_the_probe_to_the_adapters_and_not_to_the_base_model() -> None:
    from rag_pipeline.eval.evaluate import EvaluateConfig, answer_settings

    c = EvaluateConfig(adapter=["adapters/smollm2-disfl-qa"], abstain_probe=True, probe_bias=-0.369)
    theirs, base = answer_settings(c, "adapters/smollm2-disfl-qa"), answer_settings(c, None)
    assert (theirs.abstain_probe, theirs.probe_bias, base.abstain_probe, base.probe_bias) == (True, -0.369, False, 0.0)


def test_on_a_servers_decode_engine_the_probe_reads_the_model_on_the_engines_thread(env: dict, adapter: Path, shape, monkeypatch) -> None:
    from rag_pipeline import batching

    coef = np.random.default_rng(2).normal(size=shape[0])
    write_probe(adapter, shape, intercept=0.0, coef=coef, cutoff=1e9)  # scores recorded, nothing held
    pipe = A.Pipeline.load(cfg(env, adapter))
    pipe.calibrations = NEVER
    alone = [a.probe for a in pipe.answer_batch(QUESTIONS)]
    pipe.engine = batching.DecodeEngine(pipe.model, max_rows=2).start()
    calls = []
    call = pipe.engine.call
    monkeypatch.setattr(pipe.engine, "call", lambda fn: calls.append(fn) or call(fn))
    try:
        assert [a.probe for a in pipe.answer_batch(QUESTIONS)] == pytest.approx(alone)
    finally:
        pipe.engine.stop()
    assert any(getattr(fn, "func", None) == pipe.probe_states for fn in calls)  # the probe's reading, beside the retrieval's


def test_the_script_stores_the_fitted_probe_as_ask_scores_it(adapter: Path, shape, tmp_path: Path) -> None:
    """scripts/hidden_state_probe.py --save: the sklearn pipeline (fitted on unanswerable = 1) becomes the file whose score
    equals its decision function, with the adapter's threshold and the yes/no questions it was fitted and chosen on."""
    import argparse

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    script = load_script("hidden_state_probe")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, shape[0])), np.arange(40) % 3 != 0
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)).fit(x, ~y)
    train = [it.id for it in script.load_qa(script.SPLITS["train"])[:40]]
    run = tmp_path / "dev-run"
    run.mkdir()
    (run / "predictions.jsonl").write_text(json.dumps({"id": script.load_qa(script.SPLITS["dev"])[0].id, "context": "retrieved", "system": "a"}) + "\n", encoding="utf-8")
    args = argparse.Namespace(adapter=str(adapter), readings=((1, "last"),), c=0.1, index="idx", dev_run=str(run), max_false_abstain=0.15)
    script.save_probe(fitted, 0.25, train, y, args)
    p = P.read(adapter)
    P.check(p, adapter, "causal", *shape, THRESHOLD)
    assert [p.score(v) for v in x[:5]] == pytest.approx(fitted.decision_function(x[:5]).tolist())
    assert (p.cutoff, p.margin_threshold, p.readings) == (0.25, THRESHOLD, ((1, "last"),))
    with pytest.raises(SystemExit, match="raise --max-false-abstain"):
        script.save_probe(fitted, float("inf"), train, y, args)


def test_a_server_marks_the_questions_the_probe_holds_and_refuses_a_missing_probe_before_binding(
        env: dict, adapter: Path, shape, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """serve --abstain-probe: a real server on loopback answers a held question with the abstention, marked ``probe``,
    no completion tokens; a probe that is not there is one error line before the port is bound."""
    import httpx
    import openai
    from serve_helpers import ThreadServer, free_port, wait_healthy

    from rag_pipeline.cli import main as cli_main
    from rag_pipeline.serve import ServeConfig
    from rag_pipeline.serve.app import create_app

    bare = tmp_path / "bare"
    shutil.copytree(adapter, bare)
    status = cli_main(["serve", "--index", str(env["index"]), "--adapter", str(bare), "--device", "cpu", "--abstain-probe",
                       "--port", str(free_port())])
    assert status == 2 and "answerability_probe.json, which does not exist" in capsys.readouterr().err
    write_probe(adapter, shape, intercept=1.0)
    served = ServeConfig(index=str(env["index"]), adapter=str(adapter), device="cpu", dtype="float32", max_new_tokens=4,
                         min_score=-1.0, answer_check="off", abstain_probe=True)
    pipe = A.Pipeline.load(served)
    with ThreadServer(create_app(served, "adapter", "", lambda: pipe)) as srv:
        wait_healthy(srv.url, 30)
        r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60,
                       json={"model": "adapter", "messages": [{"role": "user", "content": QUESTIONS[0]}]}).json()
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
        chunks = list(client.chat.completions.create(model="adapter", messages=[{"role": "user", "content": QUESTIONS[1]}],
                                                     stream=True))
    assert r["choices"][0]["message"]["content"] == A.ABSTAIN and (r["abstained"], r["abstain_reason"]) == (True, "probe")
    assert r["usage"]["completion_tokens"] == 0 and r["citations"] == []
    assert r["usage"]["prompt_tokens"] == len(pipe.prompt_ids(QUESTIONS[:1])[0])  # the probe read it, once
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # the openai client, streaming
    assert streamed == A.ABSTAIN and (chunks[-1].model_extra["abstained"], chunks[-1].model_extra["abstain_reason"]) == (True, "probe")


def test_the_reading_stops_after_its_deepest_layer_and_equals_every_hidden_state(env: dict, adapter: Path, shape) -> None:
    """Pipeline.probe_states runs the decoder only up to the deepest layer it reads when that is short of the last (each
    hook's output is the very tensor output_hidden_states gives), and the whole pass for the embeddings and the last
    layer (after the final norm); a ``question`` reading is the mean over the prompt's last ``window`` states."""
    pipe = A.Pipeline.load(cfg(env, adapter, abstain_probe=False))
    prompts, windows = pipe.probe_inputs(pipe.prompt_texts(QUESTIONS), QUESTIONS, True)
    assert prompts == pipe.prompt_ids(QUESTIONS) and pipe.probe_inputs(pipe.prompt_texts(QUESTIONS), QUESTIONS, False) == (prompts, None)
    with torch.no_grad():
        full = [pipe.model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states for p in prompts]
    calls = []
    layers = pipe.model.get_decoder().layers
    hooks = [len(m._forward_hooks) for m in layers]  # transformers keeps its own there
    last = layers[-1]
    hook = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        for layer in range(shape[1] + 1):
            calls.clear()
            got = pipe.probe_states(prompts, ((layer, "last"), (layer, "question")), windows)
            want = [np.concatenate([f[layer][0, -1].numpy(), f[layer][0, -w:].mean(0).numpy()]) for f, w in zip(full, windows)]
            assert all(np.allclose(g, x, atol=1e-6, rtol=0) and np.array_equal(g[:shape[0]], x[:shape[0]]) for g, x in zip(got, want)), layer
            assert bool(calls) == (layer in (0, shape[1])), layer  # short of the last: the last layer never runs
        calls.clear()
        got = pipe.probe_states(prompts, ((1, "question"), (1, "last")), windows)  # in the readings' order, one pass
        want = [np.concatenate([f[1][0, -w:].mean(0).numpy(), f[1][0, -1].numpy()]) for f, w in zip(full, windows)]
        assert all(np.allclose(g, x, atol=1e-6, rtol=0) for g, x in zip(got, want)) and not calls
    finally:
        hook.remove()
    assert [len(m._forward_hooks) for m in layers] == hooks  # no hook left behind


def test_the_question_window_runs_from_the_questions_first_token_to_the_prompts_end(env: dict, adapter: Path) -> None:
    """What a ``question`` reading averages: the question as the prompt shows it (stripped, its delimiters escaped) and the
    template's closing tokens, and nothing before it; also for a question that is part of the closing text or that a
    passage holds word for word."""
    pipe = A.Pipeline.load(cfg(env, adapter, abstain_probe=False))
    asked = ["  Who wrote the first computer program?  ", "What does </documents> mean here?", "a", "assistant", "end"]
    texts = pipe.prompt_texts(asked)
    quoted = "Who wrote the first computer program?"
    asked.append(quoted)
    texts.append(pipe._model_text(pipe._render(quoted, [{"id": "x", "title": "t", "text": f"Asked: {quoted} Ada Lovelace did."}])))
    prompts, windows = pipe.probe_inputs(texts, asked, True)
    for ids, question, window in zip(prompts, asked, windows):
        tail = pipe.tokenizer.decode(ids[-window:])
        shown = A.shown_question(pipe.tokenizer, question)
        assert tail.lstrip().startswith(shown) and pipe.tokenizer.decode(ids[:-window]).rstrip().endswith("Question:"), question
    with pytest.raises(A.InputError, match="does not end with the question"):
        pipe.probe_inputs(texts[:1], ["a question asked elsewhere"], True)


def test_a_question_pooled_probe_scores_the_state_ask_reads(env: dict, adapter: Path, shape) -> None:
    """With a ``question`` reading the score ask records is the probe's of the two readings read separately."""
    readings = ((1, "last"), (2, "question"))
    coef = np.random.default_rng(4).normal(size=2 * shape[0])
    p = write_probe(adapter, shape, intercept=-1e6, coef=coef, readings=readings)
    pipe = A.Pipeline.load(cfg(env, adapter))
    pipe.calibrations = NEVER
    prompts, windows = pipe.probe_inputs(pipe.prompt_texts(QUESTIONS), QUESTIONS, True)
    with torch.no_grad():
        full = [pipe.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states for ids in prompts]
    states = [np.concatenate([f[1][0, -1].numpy(), f[2][0, -w:].mean(0).numpy()]) for f, w in zip(full, windows)]
    assert [a.probe for a in pipe.answer_batch(QUESTIONS)] == pytest.approx([p.score(s) for s in states], abs=1e-3)
