"""The answerability probe (rag_pipeline.answer.probe, ask --abstain-probe): its file, its checks, and what ask does with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rag_pipeline.answer import ask as A
from rag_pipeline.answer import probe as P
from rag_pipeline.errors import ConfigError

QUESTIONS = ["Which volcano in Sicily erupts almost every year?", "Who wrote the first computer program?"]
NEVER = {"free": {"threshold": 1e9}}  # a calibration whose margin withholds nothing: the probe alone decides


@pytest.fixture()
def adapter(env: dict, tmp_path: Path) -> Path:
    out = tmp_path / "adapter"
    shutil.copytree(env["adapter"], out)
    return out


@pytest.fixture(scope="module")
def shape(env: dict) -> tuple[int, int]:
    config = json.loads((Path(env["base"]) / "config.json").read_text(encoding="utf-8"))
    return config["hidden_size"], config["num_hidden_layers"]


def write_probe(adapter: Path, shape: tuple[int, int], intercept: float, cutoff: float = 0.0, coef=None, layer: int = 1,
                yes_no: int = 0, changes: dict | None = None) -> P.Probe:
    size = shape[0]
    rng = np.random.default_rng(0)
    p = P.Probe(layer, rng.normal(size=size), rng.uniform(0.5, 2.0, size), np.zeros(size) if coef is None else coef, intercept,
                cutoff, yes_no, P.weights_sha256(adapter))
    (adapter / P.FILE).write_text(json.dumps({**p.to_json({"fitted_on": {"questions": 2}}), **(changes or {})}), encoding="utf-8")
    return p


def cfg(env: dict, path: Path, **kw) -> A.AskConfig:
    return A.AskConfig(**{"index": str(env["index"]), "adapter": str(path), "device": "cpu", "dtype": "float32", "max_new_tokens": 4,
                          "min_score": -1.0, "answer_check": "off", "abstain_probe": True, **kw})


def test_the_file_round_trips_and_scores_a_state_by_its_formula(adapter: Path, shape) -> None:
    coef = np.linspace(-1, 1, shape[0])
    p = write_probe(adapter, shape, 0.25, cutoff=0.5, coef=coef)
    back = P.load(adapter, *shape)
    state = np.arange(shape[0], dtype=np.float32)
    assert back.score(state) == pytest.approx(float(((state - p.mean) / p.scale) @ coef + 0.25))
    assert (back.layer, back.cutoff, back.yes_no_questions) == (1, 0.5, 0)


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "is not an answerability probe"),
    ({"coef": [1.0]}, "reads a state of size 1"),
    ({"layer": 99}, "after layer 99"),
    ({"cutoff": float("nan")}, "non-finite"),
    ({"weights_sha256": "0" * 64}, "fitted on other weights"),
])
def test_a_bad_or_stale_probe_is_refused_with_the_fix(adapter: Path, shape, change: dict, message: str) -> None:
    write_probe(adapter, shape, 0.0, changes=change)
    with pytest.raises(ConfigError, match=message) as e:
        P.load(adapter, *shape)
    assert "hidden_state_probe.py --save" in str(e.value)


def test_asking_for_the_probe_without_one_or_without_an_adapter_is_refused(env: dict, adapter: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist.*--save"):
        A.Pipeline.load(cfg(env, adapter))
    with pytest.raises(ConfigError, match="pass --adapter"):
        A.Pipeline.load(cfg(env, adapter, adapter="", no_adapter=True, base_model=str(env["base"])))


def test_a_question_the_probe_scores_above_its_cutoff_is_not_generated(env: dict, adapter: Path, shape) -> None:
    write_probe(adapter, shape, intercept=1.0)  # every prompt scores 1.0, above the cutoff 0
    pipe = A.Pipeline.load(cfg(env, adapter))
    assert "answerability probe (layer 1, cutoff 0.00)" in pipe.description
    pipe.calibrations = NEVER
    for ans in pipe.answer_batch(QUESTIONS):
        assert (ans.abstained, ans.abstain_reason, ans.raw, ans.margin, ans.probe) == (True, "probe", "", None, 1.0)
        assert ans.answer == A.ABSTAIN and ans.retrieved  # the passages it was shown are kept
    pipe.calibrations = {}  # no calibrated abstention (greedy): nor the probe, whose cutoff was chosen beside one
    assert [a.probe for a in pipe.answer_batch(QUESTIONS)] == [None, None]
    pipe.calibrations = {"free": NEVER["free"], "grounded": NEVER["free"]}
    assert [a.abstain_reason for a in pipe.answer_batch(QUESTIONS, grounded=True)] == [None, None]  # grounded: a copied span


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

    c = EvaluateConfig(adapter=["adapters/smollm2-disfl-qa"], abstain_probe=True)
    assert answer_settings(c, "adapters/smollm2-disfl-qa").abstain_probe and not answer_settings(c, None).abstain_probe


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
    assert len(calls) >= 2  # the retrieval's embeddings, and the probe's reading
