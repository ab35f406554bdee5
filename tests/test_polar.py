"""Yes/no questions answered yes or no (rag_pipeline.answer.polar): the detector against the bundled QA
files, the opening's constraint and its bias against the real SmolLM2 tokenizer, and the pipeline end
to end on a tiny Llama whose vocabulary holds "Yes" and "No"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import torch

from conftest import REPO, TOPICS, write_jsonl
from rag_pipeline.answer import ask as A
from rag_pipeline.answer import polar
from rag_pipeline.generator import ConstrainedLogits
from rag_pipeline.metrics import yes_no_gold


@pytest.mark.parametrize("question,expected", [
    ("Did he win the race?", True),
    ("Is the tower in Paris?", True),
    ("was there a fire at the mill?", True),
    ("Doesn't it rain in Spain?", True),
    ("Can’t they swim?", True),                      # a typographic apostrophe
    ("What is the tower made of?", False),
    ("Is it red or blue?", False),                   # one of two, not yes or no
    ("Does the US know where Gadhafi is?", False),   # a wh-word anywhere: left to the model
    ("Where no when was BSkyB's digital service launched?", False),
    ("The tower is in Paris?", False),
    ("Can you name the ship?", False),               # a request
    ("May I know the name of the ship?", False),
    ('"Is it red?" she asked.', True),               # an opening quote
    ("", False),
])
def test_a_yes_no_question_opens_with_an_auxiliary_and_has_no_wh_word_or_alternative(question: str, expected: bool) -> None:
    assert polar.is_polar(question) is expected


def test_the_detector_on_the_bundled_files_finds_the_yes_no_questions_and_leaves_disfl_qa_alone() -> None:
    coqa = json.loads((REPO / "corpus" / "coqa_ood" / "qa.json").read_text())
    found = [polar.is_polar(r["question"]) for r in coqa]
    yes_no = [yes_no_gold(r["answers"]) is not None for r in coqa]
    assert sum(f and y for f, y in zip(found, yes_no)) == 67 and sum(yes_no) == 68  # one asks "... know where ...?"
    assert not any(f and not y for f, y in zip(found, yes_no))  # no free-form question taken for a yes/no one
    test = [json.loads(line) for line in (REPO / "corpus" / "disfl_qa" / "qa" / "test.jsonl").open()]
    assert sum(polar.is_polar(r["question"]) for r in test) == 0  # the test split's figures do not move


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    from rag_pipeline.model_paths import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")))


def test_the_openings_are_every_token_that_reads_yes_or_no(smol) -> None:
    ids = polar.polar_openings(smol)
    assert {smol.decode([i]).strip() for i in ids["yes"]} >= {"Yes", "yes"} and {smol.decode([i]).strip() for i in ids["no"]} >= {"No", "no"}
    assert {smol.decode([i]).strip().lower() for i in ids["yes"]} == {"yes"} and {smol.decode([i]).strip().lower() for i in ids["no"]} == {"no"}
    assert ids["mask"].sum() == len(ids["yes"]) + len(ids["no"])
    assert smol("Yes [1]", add_special_tokens=False)["input_ids"][0] in ids["yes"]


def test_the_first_token_is_yes_or_no_and_the_bias_chooses_between_them(smol) -> None:
    ids = polar.polar_openings(smol)
    the = smol("The", add_special_tokens=False)["input_ids"][0]
    scores = torch.zeros(len(smol))
    scores[ids["yes"]], scores[ids["no"]], scores[the] = 1.0, 0.0, 5.0  # "The" would win unconstrained
    assert polar.polar_score(scores, smol) == pytest.approx(1.0 + torch.log(torch.tensor(len(ids["yes"]) / len(ids["no"]))).item(), abs=1e-5)
    for bias, want in ((0.0, "yes"), (polar.polar_score(scores, smol) + 0.01, "no")):
        row = polar.PolarStart(smol, bias=bias)
        out = ConstrainedLogits([row], 0)(torch.zeros((1, 0), dtype=torch.long), scores[None])[0]
        assert smol.decode([int(out.argmax())]).strip().lower() == want
        assert torch.isinf(out[the]) and torch.isinf(out[ids["no" if want == "yes" else "yes"]]).all()
        first = int(out.argmax())
        after = ConstrainedLogits([row], 0)(torch.tensor([[first]]), scores[None])[0]
        glued, apart = smol("Noah", add_special_tokens=False)["input_ids"][1], smol(" [1]", add_special_tokens=False)["input_ids"][0]
        assert torch.isinf(after[glued]) and after[apart] == scores[apart]  # "No" + "ah" would read "Noah"
        assert not torch.isinf(after[smol.eos_token_id])
        later = ConstrainedLogits([row], 0)(torch.tensor([[first, apart]]), scores[None])[0]
        assert torch.equal(later, scores)  # after that, anything goes
    also = ConstrainedLogits([polar.PolarStart(smol, also=[the])], 0)(torch.zeros((1, 0), dtype=torch.long), scores[None])[0]
    assert int(also.argmax()) == the  # where the model may still refuse, its refusal's opening stays allowed


def test_free_rows_beside_constrained_ones_are_left_alone(smol) -> None:
    scores = torch.randn(2, len(smol))
    out = ConstrainedLogits([None, polar.PolarStart(smol)], 0)(torch.zeros((2, 0), dtype=torch.long), scores)
    ids = polar.polar_openings(smol)
    kept = set(torch.nonzero(~torch.isinf(out[1])).flatten().tolist())
    assert torch.equal(out[0], scores[0]) and kept in (set(ids["yes"].tolist()), set(ids["no"].tolist()))
    assert polar.constraints(smol, ["What is it?"]) is None
    rows = polar.constraints(smol, ["What is it?", "Is it red?"])
    assert rows[0] is None and isinstance(rows[1], polar.PolarStart)


# ---------------------------------------------------------------------------------------------- end to end

def polarity(text: str) -> str | None:
    """The opening word of the tiny model's answer ("NoThe..." is "no": what follows it is noise)."""
    return next((w for w in ("yes", "no") if text.lower().startswith(w)), None)


POLAR_TEXTS = tuple(["Yes [1]", "No [1]", "Yes, it is [2]", "No, it is not [2]"] * 10)
YES_NO = "Is the Moon the only natural satellite of Earth?"
WH = "What is the natural satellite of Earth?"


@pytest.fixture(scope="module")
def polar_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.embed import HashingEmbedder
    from tiny_models import build_tiny_llama, make_adapter

    root = tmp_path_factory.mktemp("polar")
    docs = write_jsonl(root / "docs.jsonl", [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()])
    build_index(IndexConfig(paths=[str(docs)], index=str(root / "idx"), embedder="hashing:64"), embedder=HashingEmbedder(64, 64))
    base = build_tiny_llama(root / "llama", extra=POLAR_TEXTS)
    return {"root": root, "index": root / "idx", "adapter": make_adapter(base, root / "adapter")}


def settings(env: dict, **kw) -> A.AskConfig:
    return A.AskConfig(**{"index": str(env["index"]), "adapter": str(env["adapter"]), "device": "cpu", "dtype": "float32",
                          "max_new_tokens": 6, "min_score": -1.0, "answer_check": "off", **kw})


def test_a_yes_no_question_is_answered_yes_or_no_and_the_others_as_before(polar_env: dict) -> None:
    opened = A.Pipeline.load(settings(polar_env))
    free = A.Pipeline.load(settings(polar_env, yes_no_questions="free"))
    assert opened.cfg.yes_no_questions == "yes-or-no"  # the default
    for margins in (False, True):
        a, b = opened.answer_batch([YES_NO, WH], margins=margins), free.answer_batch([YES_NO, WH], margins=margins)
        assert (a[1].raw, a[1].margin) == (b[1].raw, b[1].margin)  # a wh-question decodes as it did
        if margins:  # scored: the margin is the model's own answer's, and the answer then opens with yes or no
            assert polarity(a[0].raw) is not None and a[0].margin == b[0].margin
        else:  # greedy abstention: yes, no, or the refusal's opening
            assert polarity(a[0].raw) is not None or a[0].raw.startswith("The")
    opened.yes_no_bias = 1e9  # nothing scores above it: no
    assert polarity(opened.answer_batch([YES_NO], margins=True)[0].raw) == "no"
    opened.yes_no_bias = -1e9
    assert polarity(opened.answer_batch([YES_NO], margins=True)[0].raw) == "yes"


def test_calibrate_measures_the_yes_no_bias_that_ask_then_applies(polar_env: dict, tmp_path: Path) -> None:
    from rag_pipeline.eval.calibrate import CalibrateConfig, main as calibrate_main

    adapter = tmp_path / "adapter"
    shutil.copytree(polar_env["adapter"], adapter)
    before = json.loads((adapter / "rag_pipeline.json").read_text())
    qa = write_jsonl(tmp_path / "dev.jsonl", [{"id": f"q-{k}", "question": f"What about {t}?", "answer": "x", "doc_id": k}
                                              for k, (t, _) in TOPICS.items()])
    c = CalibrateConfig(adapter=str(adapter), index=str(polar_env["index"]), qa=str(qa), task="yes-no", limit=12,
                        device="cpu", dtype="float32")
    assert calibrate_main(c) == 0
    meta = json.loads((adapter / "rag_pipeline.json").read_text())
    stored = meta["abstention"]["yes_no"]
    assert stored["yes"] > 0 and stored["no"] > 0 and stored["questions"] == stored["yes"] + stored["no"]
    assert stored["no_swap"] == "corpus"  # how its "no" questions were written, kept with the bias
    assert {k: v for k, v in meta.items() if k != "abstention"} == {k: v for k, v in before.items() if k != "abstention"}
    pipe = A.Pipeline.load(settings(polar_env, adapter=str(adapter)))
    assert pipe.yes_no_bias == stored["bias"] and pipe.calibrations == {}  # a bias, not a threshold
    assert pipe.answer(WH).margin is None  # and no calibrated abstention comes with it


def test_calibrate_can_write_its_no_questions_with_the_passages_own_facts(polar_env: dict, tmp_path: Path) -> None:
    """--no-swap passage reaches the question writer (tests/test_questions.py checks what it writes), the result
    says how its questions were written, and --dry-run leaves the adapter as it was."""
    from rag_pipeline.data import questions as written
    from rag_pipeline.eval.calibrate import CalibrateConfig, run_yes_no
    from rag_pipeline.qa import QAItem

    adapter = tmp_path / "adapter"
    shutil.copytree(polar_env["adapter"], adapter)
    before = (adapter / "rag_pipeline.json").read_text()
    qa = write_jsonl(tmp_path / "dev.jsonl", [{"id": f"q-{k}", "question": f"What about {t}?", "answer": "x", "doc_id": k}
                                              for k, (t, _) in TOPICS.items()])
    asked = []

    def writer(retriever, rules, settings):  # written.generate's place: two questions, one of each answer
        asked.append(settings)
        return written.Result([QAItem("g-1", "Is the Eiffel Tower in Paris?", ["Yes"], "eiffel", True),
                               QAItem("g-2", "Is the Nile in Asia?", ["No"], "nile", True)], {})

    c = CalibrateConfig(adapter=str(adapter), index=str(polar_env["index"]), qa=str(qa), task="yes-no", limit=12,
                        device="cpu", dtype="float32", no_swap="passage", dry_run=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(written, "generate", writer)
        result = run_yes_no(c)
    assert asked[0].no_swap == "passage" and asked[0].yes_no == 1.0 and asked[0].n == 12
    assert result["no_swap"] == "passage" and (result["yes"], result["no"]) == (1, 1)
    assert (adapter / "rag_pipeline.json").read_text() == before


def test_polar_auc_script_ranks_a_qa_files_yes_no_questions(polar_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """scripts/polar_auc.py end to end on the tiny model: one line per adapter and the table (it once built a
    settings object without an adapter, which calibrate's settings refuse)."""
    import sys

    from conftest import load_script

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate([
        ("Is the Eiffel Tower in Paris?", "yes"), ("Is the Nile in Asia?", "no"), ("Was Python created in 1991?", "yes"),
        ("Who created Python?", "Guido van Rossum")])])
    monkeypatch.setattr(sys, "argv", ["polar_auc.py", "--index", str(polar_env["index"]), "--qa", str(qa), str(polar_env["adapter"])])
    assert load_script("polar_auc").main() == 0
    out = capsys.readouterr().out
    line = json.loads(out.splitlines()[0])[str(polar_env["adapter"])]
    assert line["questions"] == 3 and line["gold_yes"] == 2 and "ROC AUC" in out


def test_beam_search_keeps_the_opening_and_leaves_other_rows_free(polar_env: dict) -> None:
    """With beams, transformers asks each row for its allowed tokens: a yes/no row's opening, any token for the others."""
    beams = A.Pipeline.load(settings(polar_env, num_beams=2, abstention="greedy"))
    free = A.Pipeline.load(settings(polar_env, num_beams=2, abstention="greedy", yes_no_questions="free"))
    a, b = beams.answer_batch([YES_NO, WH]), free.answer_batch([YES_NO, WH])
    assert polarity(a[0].raw) is not None or a[0].raw.startswith("The")
    assert a[1].raw == b[1].raw


def test_a_tokenizer_that_spells_only_one_word_is_left_alone(smol) -> None:
    """Without both a "yes" and a "no" token the opening could not choose: the answers open as the model likes."""
    import copy

    half = copy.copy(smol)
    ids = polar.polar_openings(smol)
    half._rag_polar_openings = {**ids, "yes": ids["yes"][:0]}
    assert not polar.usable(half) and polar.constraints(half, ["Is it red?"]) is None
    with pytest.raises(ValueError, match="lacks a token"):
        polar.PolarStart(half)


def test_calibrate_yes_no_refuses_grounded_decoding_and_an_empty_limit() -> None:
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.eval.calibrate import CalibrateConfig

    for bad in ({"grounded": True}, {"limit": 0}):
        with pytest.raises(ConfigError, match="--task yes-no measures free decoding"):
            CalibrateConfig(adapter="a", task="yes-no", **bad)
    with pytest.raises(ConfigError, match="--no-swap passage chooses how --task yes-no writes"):
        CalibrateConfig(adapter="a", no_swap="passage")
    assert CalibrateConfig(adapter="a", task="yes-no", no_swap="passage").no_swap == "passage"
    with pytest.raises(ConfigError, match="--no-swap is 'nearby': use corpus or passage"):
        CalibrateConfig(adapter="a", task="yes-no", no_swap="nearby")  # type: ignore[arg-type]


def test_a_threshold_never_measured_on_a_yes_no_question_does_not_withhold_one(polar_env: dict) -> None:
    """The calibrated margin is the free answer's: a threshold chosen on validation questions none of which was a
    yes/no question (yes_no_questions 0) withholds the others, never a yes/no answer; one chosen with them, one that
    does not record the count, or a yes/no question answered as the model likes, withholds as before."""
    pipe = A.Pipeline.load(settings(polar_env))
    free = A.Pipeline.load(settings(polar_env, yes_no_questions="free"))
    assert pipe.opens_yes_no(YES_NO) and not pipe.opens_yes_no(WH) and not free.opens_yes_no(YES_NO)
    for calibration, p, kept in (({"threshold": -1e9, "yes_no_questions": 0}, pipe, True),
                                 ({"threshold": -1e9, "yes_no_questions": 3}, pipe, False),
                                 ({"threshold": -1e9}, pipe, False),
                                 ({"threshold": -1e9, "yes_no_questions": 0}, free, False)):
        p.calibrations = {"free": calibration}
        polar_answer, wh_answer = p.answer_batch([YES_NO, WH])
        assert wh_answer.abstain_reason == "calibration" and wh_answer.margin is not None
        assert (polar_answer.abstain_reason is None) == kept, calibration
        if kept:
            assert polarity(polar_answer.answer) is not None and polar_answer.margin is not None
    pipe.calibrations = {"grounded": {"threshold": -1e9, "yes_no_questions": 0}}
    assert pipe.answer_batch([YES_NO], grounded=True)[0].abstain_reason == "calibration"  # grounded: a copied span


def test_without_yes_and_no_tokens_a_yes_no_answer_is_withheld_like_any_other(polar_env: dict, monkeypatch) -> None:
    """A tokenizer that cannot spell the opening answers yes/no questions as the model likes: no exemption then."""
    pipe = A.Pipeline.load(settings(polar_env))
    ids = polar.polar_openings(pipe.tokenizer)
    monkeypatch.setattr(pipe.tokenizer, "_rag_polar_openings", {**ids, "no": ids["no"][:0]})
    assert not pipe.opens_yes_no(YES_NO)
    pipe.calibrations = {"free": {"threshold": -1e9, "yes_no_questions": 0}}
    assert pipe.answer_batch([YES_NO])[0].abstain_reason == "calibration"


def test_calibrate_records_how_many_validation_questions_were_yes_no(polar_env: dict, tmp_path: Path) -> None:
    from rag_pipeline.eval.calibrate import CalibrateConfig, run as calibrate_run

    adapter = tmp_path / "adapter"
    shutil.copytree(polar_env["adapter"], adapter)
    rows = [{"id": f"q-{k}-{i}", "question": q, "answer": "x", "doc_id": k}
            for k, (t, _) in TOPICS.items() for i, q in enumerate((f"What about {t}?", f"Is there {t}?"))]
    qa = write_jsonl(tmp_path / "dev.jsonl", rows)
    r = calibrate_run(CalibrateConfig(adapter=str(adapter), index=str(polar_env["index"]), qa=str(qa), limit=0,
                                      device="cpu", dtype="float32", max_new_tokens=6))
    assert r["questions"] == len(rows) and r["yes_no_questions"] == len(rows) // 2
    stored = json.loads((adapter / "rag_pipeline.json").read_text())["abstention"]["free"]
    assert stored["yes_no_questions"] == len(rows) // 2
