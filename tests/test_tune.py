"""tune: the budget, the plan, bad input before any model loads, and the whole run with tiny models:
every stage's artifact, a rerun that does nothing, --from, and an interrupted run that resumes to the
same adapter as an uninterrupted one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import write_jsonl

from rag_pipeline import train as train_stage
from rag_pipeline import tune
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.tune import Corpus, TuneConfig, make_plan, parse_budget

N_DOCS = 40
PROBE = tune.Probe(embed_chunk_s=0.01, train_example_s=2.0, answer_s=0.8, read_back_s=0.3, probe_s=40.0, device="cpu", bf16=False)


def _doc(i: int) -> dict:
    return {"id": f"d{i:02d}", "title": f"Alpha{i}",
            "text": f"The town of Alpha{i} lies near the river Beta{i}. Its founder was Gamma{i} in the year {1000 + i}. "
                    f"People there enjoy Delta{i} festivals and Epsilon{i} music."}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40 documents, a tiny Llama and an adapter of it (the reference), and a recipe for the test fakes."""
    from tiny_models import build_tiny_llama, make_adapter

    root = tmp_path_factory.mktemp("tune")
    docs = write_jsonl(root / "docs" / "docs.jsonl", [_doc(i) for i in range(N_DOCS)])
    base = build_tiny_llama(root / "llama")
    return {"root": root, "docs": docs, "base": base, "reference": make_adapter(base, root / "reference")}


def _cfg(setup: dict, out: Path, **kw) -> TuneConfig:
    recipe = {"paths": [str(setup["docs"])], "output": str(out), "budget": "full", "questions": 30, "base_model": str(setup["base"]),
              "reference": str(setup["reference"]), "device": "cpu",
              "index": {"embedder": "hashing:64", "chunk_overlap": 8},
              "raft": {"question_generator": "fake", "question_top_k": N_DOCS, "max_prompt_tokens": 512},
              "train": {"max_length": 512, "eval_subset": 4, "eval_generate": 2, "max_new_tokens": 8},
              "evaluate": {"max_new_tokens": 8}, "calibrate": {"max_new_tokens": 8}}
    return TuneConfig(**{**recipe, **kw})


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's figures are a 2-core CPU's (test_the_probe_measures_the_real_stages runs the real one)."""
    monkeypatch.setattr(tune, "probe", lambda cfg, corpus: PROBE)


# ------------------------------------------------------------------------------ budget and plan


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 2700),
                                          ("quick", 900), ("full", None), ("10min", 600)])
def test_budget_forms(text: str, seconds: float | None) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "h", "-5m"])
def test_a_budget_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        TuneConfig(paths=["x"], budget=text)


def _corpus(docs: int = 400, chunks: int = 800) -> Corpus:
    return Corpus(docs, chunks * 900, chunks, "text " * 100, "k")


def test_the_plan_fills_the_budget_and_grows_with_it() -> None:
    cfg = TuneConfig(paths=["x"])
    plans = {b: make_plan(TuneConfig(paths=["x"], budget=b), _corpus(), PROBE, False) for b in ("8m", "10m", "30m", "2h")}
    for b, plan in plans.items():
        total = sum(plan.seconds.values()) + PROBE.probe_s
        assert 0.6 * parse_budget(b) < total <= tune.SAFETY * parse_budget(b)  # within the budget, and most of it used
        assert plan.steps >= 1 and plan.questions >= plan.steps * plan.examples_per_step / (tune.SPLIT_RATIO[0] * cfg.epochs)
        assert plan.calibrate_questions >= tune.MIN_HELD_OUT and plan.evaluate_questions >= tune.MIN_HELD_OUT
        assert plan.seconds["train"] > plan.seconds["dataset"]  # training gets most of it
    assert plans["2h"].steps > 3 * plans["30m"].steps and plans["2h"].questions > 3 * plans["30m"].questions
    assert "30 min" in plans["30m"].table() and "train" in plans["30m"].table()


def test_a_small_corpus_caps_the_questions_and_full_has_no_budget() -> None:
    small = make_plan(TuneConfig(paths=["x"], budget="2h"), _corpus(20, 20), PROBE, False)
    assert small.questions == 60  # 3 per chunk: what the documents can give
    full = make_plan(TuneConfig(paths=["x"], budget="full"), _corpus(), PROBE, False)
    assert full.budget_s is None and full.questions == 2400 and full.steps == 420  # 2400 x 0.7 x 2 epochs / 8


def test_a_budget_too_small_for_one_step_names_the_minimum() -> None:
    with pytest.raises(ConfigError, match=r"budget 5m is too small on this machine: .* at least \d+ minutes"):
        make_plan(TuneConfig(paths=["x"], budget="5m"), _corpus(), PROBE, False)


def test_the_probe_measures_the_real_stages(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real probe, with the tiny models
    cfg = _cfg(setup, Path("unused"))
    probed = tune.probe(cfg, tune.scan_documents(cfg))
    assert all(getattr(probed, k) > 0 for k in ("embed_chunk_s", "train_example_s", "answer_s", "read_back_s", "probe_s"))
    assert probed.device == "cpu" and probed.probe_s < 120


# ------------------------------------------------------------------------------ bad input


def test_bad_inputs_fail_before_any_model_loads(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_models(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(tune, "probe", no_models)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no document file"):
        tune.run(_cfg(setup, tmp_path / "o1", paths=[str(empty)]))
    with pytest.raises(InputError, match="does not exist"):
        tune.run(_cfg(setup, tmp_path / "o2", paths=[str(tmp_path / "nowhere")]))
    few = write_jsonl(tmp_path / "few" / "d.jsonl", [_doc(i) for i in range(3)])
    with pytest.raises(InputError, match=r"holds 3 documents: tune needs at least 10"):
        tune.run(_cfg(setup, tmp_path / "o3", paths=[str(few)]))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files that tune did not write"):
        tune.run(_cfg(setup, foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="--qa .* does not exist"):
        tune.run(_cfg(setup, tmp_path / "o4", qa=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ConfigError, match=r"budget 2m is too small: tune needs at least 5 minutes"):
        tune.run(_cfg(setup, tmp_path / "o7", budget="2m"))
    with pytest.raises(ConfigError, match=r"TrainConfig setting\(s\) max_steps under 'train:' in the tune recipe are tune's own"):
        _cfg(setup, tmp_path / "o5", train={"max_steps": 3})
    with pytest.raises(ConfigError, match=r"TrainConfig setting\(s\) pack_shared under 'train:' .* which tune's plan does not model"):
        _cfg(setup, tmp_path / "o5", train={"pack_shared": True})
    with pytest.raises(ConfigError, match=r"RaftConfig setting\(s\) share_context under 'raft:' .* --share-context"):
        _cfg(setup, tmp_path / "o5", raft={"share_context": 8})
    with pytest.raises(ConfigError, match=r"--qa .*test.jsonl is named like a split"):
        _cfg(setup, tmp_path / "o9", qa=str(tmp_path / "test.jsonl"))
    with pytest.raises(InputError, match=r"reference adapter .* does not exist: .* --reference ''"):
        tune.run(_cfg(setup, tmp_path / "o10", reference=str(tmp_path / "no-adapter")))
    with pytest.raises(ConfigError, match=r"unknown TrainConfig setting\(s\) learning_rat under 'train:'"):
        _cfg(setup, tmp_path / "o8", train={"learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="--from 'training' is not a stage"):
        _cfg(setup, tmp_path / "o6", from_stage="training")
    with pytest.raises(ConfigError, match="--from export without --export"):
        _cfg(setup, tmp_path / "o6", from_stage="export")
    for bad in ({"epochs": math.inf}, {"learning_rate": math.inf}):
        with pytest.raises(ConfigError, match="epochs and learning_rate finite and > 0"):
            _cfg(setup, tmp_path / "o11", **bad)


def test_dry_run_prints_the_plan_and_writes_nothing(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dry"
    assert tune.main(_cfg(setup, out, dry_run=True, budget="2h")) == 0
    err = capsys.readouterr().err
    assert "plan (budget 120 min" in err and "train" in err and "questions" in err
    assert not out.exists()


# ------------------------------------------------------------------------------ the whole run


def _weights(folder: Path) -> bytes:
    return (folder / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def tuned(setup: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run") / "tune"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune, "probe", lambda cfg, corpus: PROBE)
        manifest = tune.run(_cfg(setup, out))
    return manifest, out


def test_every_stage_writes_its_own_artifact(tuned: tuple[dict, Path]) -> None:
    manifest, out = tuned
    assert list(manifest["stages"]) == ["index", "dataset", "train", "calibrate", "evaluate"]
    assert json.loads((out / "index" / "manifest.json").read_text())["kind"] == "rag-index"
    assert json.loads((out / "dataset" / "manifest.json").read_text())["kind"] == "raft-dataset"
    meta = json.loads((out / "adapter" / "rag_pipeline.json").read_text())
    assert meta["config"]["init_adapter"] and "free" in meta["abstention"]  # trained from the reference, calibrated
    # the tiny tokenizer has no yes/no token: no lean is measured, and the stage goes on
    assert "yes_no" not in meta["abstention"] and manifest["stages"]["calibrate"]["summary"]["yes_no_bias"] is None
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert [s["adapter"] for s in metrics["systems"]] == [None, manifest["config"]["reference"], str(out / "adapter")]
    assert metrics["contexts"] == ["retrieved", "injected"]
    # held out by document: no test or validation question comes from a training document
    train_docs = {json.loads(line)["doc_id"] for line in (out / "dataset" / "jsonl" / "train.jsonl").read_text().splitlines()}
    for name in ("validation", "test"):
        held = [json.loads(line) for line in (out / "heldout" / f"{name}.jsonl").read_text().splitlines()]
        assert held and not {r["doc_id"] for r in held} & train_docs
    report = (out / "report.md").read_text()
    assert "| tuned |" in report and "| base |" in report and "reference (" in report and "rag-pipeline serve --adapter" in report
    for stage in manifest["stages"].values():
        assert stage["seconds"] >= 0 and stage["peak_rss_mb"] > 0 and len(stage["key"]) == 16
    assert manifest["stages"]["train"]["seconds"] > 0  # the tiny index takes less than the 0.01 s recorded


def test_a_rerun_does_nothing_and_says_so(setup: dict, tuned: tuple[dict, Path], capsys: pytest.CaptureFixture) -> None:
    manifest, out = tuned
    before = _weights(out / "adapter"), (out / "evaluation" / "metrics.json").read_bytes()
    assert tune.main(_cfg(setup, out)) == 0
    err = capsys.readouterr().err
    assert err.count("up to date (same inputs and settings), skipped") == 5 and "stored in tune.json" in err
    assert (_weights(out / "adapter"), (out / "evaluation" / "metrics.json").read_bytes()) == before


def test_from_rebuilds_that_stage_and_the_later_ones(setup: dict, tuned: tuple[dict, Path], capsys: pytest.CaptureFixture) -> None:
    manifest, out = tuned
    weights = _weights(out / "adapter")
    tune.run(_cfg(setup, out, from_stage="calibrate"))
    err = capsys.readouterr().err
    assert err.count("skipped") == 3 and "[4/5] calibrate: ~" in err and "[5/5] evaluate: ~" in err
    assert _weights(out / "adapter") == weights


def test_a_stage_that_fails_midway_is_not_skipped_by_the_next_run(setup: dict, tuned: tuple[dict, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A forced stage failing after it replaced part of its artifact left its old key in tune.json, and a rerun with the
    old settings skipped the stage over the half-replaced artifact."""
    import shutil

    _, done = tuned
    out = tmp_path / "tune"
    shutil.copytree(done, out)
    real = tune.run_stage

    def fails(stage: str, *a, **k):
        if stage == "calibrate":
            raise InputError("calibration failed halfway")
        return real(stage, *a, **k)

    monkeypatch.setattr(tune, "run_stage", fails)
    with pytest.raises(InputError, match="halfway"):
        tune.run(_cfg(setup, out, from_stage="calibrate"))
    assert "calibrate" not in json.loads((out / "tune.json").read_text())["stages"]
    monkeypatch.setattr(tune, "run_stage", real)
    capsys.readouterr()
    tune.run(_cfg(setup, out))
    assert "[4/5] calibrate: ~" in capsys.readouterr().err


def _interrupt_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in training after optimizer step ``step`` (train-generator checkpoints and returns "interrupted")."""
    def stop(done: int) -> None:
        if done == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "_on_step", stop)


def test_an_interrupted_run_resumes_to_the_same_adapter(setup: dict, tuned: tuple[dict, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _, reference_run = tuned
    out = tmp_path / "tune"
    _interrupt_at(3, monkeypatch)
    assert tune.main(_cfg(setup, out)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert (out / "adapter" / "checkpoints" / "last" / "state.json").is_file() and "train" not in json.loads((out / "tune.json").read_text())["stages"]
    monkeypatch.setattr(train_stage, "_on_step", lambda step: None)
    tune.run(_cfg(setup, out))
    err = capsys.readouterr().err
    assert "[1/5] index: up to date" in err and "train: resuming from" in err
    assert _weights(out / "adapter") == _weights(reference_run / "adapter")


def test_checkpoints_of_other_settings_are_not_resumed(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted, then rerun with another learning rate: training starts afresh instead of failing on the checkpoint."""
    out = tmp_path / "tune"
    _interrupt_at(1, monkeypatch)
    assert tune.main(_cfg(setup, out)) == 130
    monkeypatch.setattr(train_stage, "_on_step", lambda step: None)
    manifest = tune.run(_cfg(setup, out, learning_rate=1e-4))
    meta = json.loads((out / "adapter" / "rag_pipeline.json").read_text())
    assert meta["config"]["learning_rate"] == 1e-4 and meta["metrics"]["steps"] == manifest["plan"]["steps"]


def test_your_own_questions_and_an_export(setup: dict, tmp_path: Path) -> None:
    """--qa: your questions are split by document with the written ones, their held-out part evaluated and reported
    on its own; --export merged: the tuned adapter exported as the export command writes it."""
    own = write_jsonl(tmp_path / "mine.jsonl", [{"id": f"m{i}", "question": f"Who founded Alpha{i}?", "answer": f"Gamma{i}",
                                                 "doc_id": f"d{i:02d}"} for i in range(N_DOCS)])
    out = tmp_path / "tune"
    manifest = tune.run(_cfg(setup, out, qa=str(own), export="merged"))
    assert list(manifest["stages"]) == ["index", "dataset", "train", "calibrate", "evaluate", "export"]
    mine = [json.loads(line) for line in (out / "heldout" / "qa-test.jsonl").read_text().splitlines()]
    train_docs = {json.loads(line)["doc_id"] for line in (out / "dataset" / "jsonl" / "train.jsonl").read_text().splitlines()}
    assert mine and all(r["question"].startswith("Who founded Alpha") for r in mine) and not {r["doc_id"] for r in mine} & train_docs
    written = [json.loads(line)["question"] for line in (out / "heldout" / "test.jsonl").read_text().splitlines()]
    assert not {r["question"] for r in mine} & set(written)  # each question reported once, with its kind
    qa_metrics = json.loads((out / "evaluation-qa" / "metrics.json").read_text())
    assert qa_metrics["qa"]["evaluated"] == len(mine) and len(qa_metrics["systems"]) == 3
    assert "## Your own questions (held-out part)" in (out / "report.md").read_text()
    exported = out / "export"
    assert json.loads((exported / "config.json").read_text())["model_type"] == "llama" and any(exported.glob("*.safetensors"))


def test_training_never_removes_a_folder_it_did_not_write(setup: dict, tuned: tuple[dict, Path], tmp_path: Path) -> None:
    """OUTPUT/adapter holding someone's own files is refused by train-generator, not removed, when tune retrains."""
    import shutil

    _, done = tuned
    out = tmp_path / "tune"
    shutil.copytree(done, out)
    shutil.rmtree(out / "adapter")
    (out / "adapter").mkdir()
    (out / "adapter" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="adapter"):
        tune.run(_cfg(setup, out, from_stage="train"))
    assert (out / "adapter" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("when", ["before training", "killed before a checkpoint", "after a checkpoint"])
def test_retraining_keeps_the_earlier_adapter_until_the_new_one_can_stand_in(setup: dict, tuned: tuple[dict, Path], tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """--from train removed the finished, calibrated adapter at once: a failure before the first checkpoint lost it.
    Now it waits aside and comes back (after kill -9, at the next start); once the new run has a checkpoint, that
    run is the one to resume and the earlier adapter goes."""
    import shutil

    _, done = tuned
    out = tmp_path / "tune"
    shutil.copytree(done, out)
    before = _weights(out / "adapter")
    if when == "killed before a checkpoint":  # what kill -9 leaves: the adapter aside under a dead pid, scratch in its place
        (out / "adapter").rename(out / ".adapter.old-4194304-0badcafe")
        (out / "adapter" / "checkpoints").mkdir(parents=True)
    if when != "after a checkpoint":
        monkeypatch.setattr(train_stage, "setup_model", lambda *a, **k: (_ for _ in ()).throw(InputError("the base model is damaged")))
        with pytest.raises(InputError, match="damaged"):
            tune.run(_cfg(setup, out, from_stage="train"))
        assert _weights(out / "adapter") == before and not list(out.glob(".adapter.old-*"))
        return
    _interrupt_at(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tune.run(_cfg(setup, out, from_stage="train"))
    assert (out / "adapter" / "checkpoints" / "last" / "state.json").is_file() and not list(out.glob(".adapter.old-*"))


_KILLED = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from rag_pipeline import tune, train as train_stage
from rag_pipeline.eval import calibrate
tune.probe = lambda cfg, corpus: tune.Probe(**{probe!r})
where = {where!r}
if where == "train":
    train_stage._on_step = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 3 else None
else:  # after calibrate stored its threshold in the adapter, before tune recorded the stage
    real = calibrate.run
    def killed(cfg, *rest):
        real(cfg, *rest)
        os.kill(os.getpid(), signal.SIGKILL)
    calibrate.run = killed
tune.run(tune.TuneConfig(**json.loads({cfg!r})))
"""


@pytest.mark.parametrize("where", ["train", "calibrate"])
def test_a_kill_9_and_a_rerun_finish_with_the_uninterrupted_adapter(setup: dict, tuned: tuple[dict, Path], tmp_path: Path,
                                                                    where: str, capsys: pytest.CaptureFixture) -> None:
    """SIGKILL (no handler, no cleanup) in the middle of training or right after calibration wrote into the adapter;
    the same command again finishes with the weights and threshold of a run that was never interrupted."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys

    manifest, reference_run = tuned
    out = tmp_path / "tune"
    cfg = dataclasses.asdict(_cfg(setup, out))
    script = _KILLED.format(tests=str(Path(__file__).parent), probe=dataclasses.asdict(PROBE), where=where, cfg=json.dumps(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert where not in json.loads((out / "tune.json").read_text())["stages"]  # killed before tune recorded the stage
    tune.run(_cfg(setup, out))
    err = capsys.readouterr().err
    assert ("train: resuming from" in err) == (where == "train")
    assert _weights(out / "adapter") == _weights(reference_run / "adapter")
    threshold = json.loads((out / "adapter" / "rag_pipeline.json").read_text())["abstention"]["free"]["threshold"]
    assert threshold == json.loads((reference_run / "adapter" / "rag_pipeline.json").read_text())["abstention"]["free"]["threshold"]


def test_the_report_says_when_the_reference_adapter_answered_better(tmp_path: Path) -> None:
    tuned = str(tmp_path / "adapter")

    def metrics(folder: str, ref: float, tun: float) -> None:
        systems = [{"name": "base", "adapter": None}, {"name": "ref", "adapter": "adapters/ref"}, {"name": "adapter", "adapter": tuned}]
        results = {name: {"retrieved": {"squad2": {"overall_f1": f}, "counts": {"questions": 24}}}
                   for name, f in (("base", 0.1), ("ref", ref), ("adapter", tun))}
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "metrics.json").write_text(json.dumps({"systems": systems, "results": results}))

    assert tune.verdict(tmp_path, tuned) is None  # nothing evaluated yet
    metrics("evaluation", 0.40, 0.45)
    assert tune.verdict(tmp_path, tuned) is None  # the tuned adapter is better
    metrics("evaluation-qa", 0.345, 0.192)  # your own questions decide when there are any
    note = tune.verdict(tmp_path, tuned)
    assert "your own held-out questions" in note and "34.5 against 19.2 (24 questions)" in note and "--adapter adapters/ref" in note


def test_the_calibrate_stage_measures_the_yes_no_lean_of_short_free_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the threshold, tune runs calibrate --task yes-no (a lean, not a threshold) for short answers decoded
    freely; a ConfigError or InputError there (no yes/no question of both answers) is a warning, not a failure."""
    from rag_pipeline.errors import InputError
    from rag_pipeline.eval import calibrate
    from rag_pipeline.eval.calibrate import CalibrateConfig

    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(calibrate, "run", lambda c, pipe=None: seen.append((c.task, c.limit, pipe)) or {"bias": -0.5})
    cfg = CalibrateConfig(adapter="a", limit=40)
    assert tune.yes_no_lean(cfg, "loaded") == -0.5 and seen == [("yes-no", tune.YES_NO_QUESTIONS, "loaded")]
    assert tune.yes_no_lean(CalibrateConfig(adapter="a", grounded=True)) is None and len(seen) == 1
    assert tune.yes_no_lean(CalibrateConfig(adapter="a", task="summary")) is None and len(seen) == 1

    def refuse(c: CalibrateConfig, pipe: object = None) -> dict:
        raise InputError("no generated question survived the filters")

    monkeypatch.setattr(calibrate, "run", refuse)
    assert tune.yes_no_lean(cfg) is None
