"""Questions written offline: candidate answers, chunk sampling, the round-trip filters, determinism,
and the ``hf:`` and ``openai:`` question writers (the latter against a real HTTP server on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TOPICS
from rag_pipeline.data import questions as Q
from rag_pipeline.errors import InputError

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# Candidate answers and chunk sampling
# ---------------------------------------------------------------------------------------------

TOWER = ("The Eiffel Tower is a wrought iron lattice tower in Paris. It was designed by the company of Gustave Eiffel. "
         "Construction ended on 31 March 1889, and the tower is 330 metres tall. Eiffel wanted it for the World Fair.")


def test_candidate_answers_find_dates_numbers_names_and_phrases() -> None:
    found = Q.candidate_answers(TOWER)
    by_kind: dict[str, list[str]] = {}
    for answer, kind in found:
        by_kind.setdefault(kind, []).append(answer)
    assert "31 March 1889" in by_kind["date"]
    assert "330 metres" in by_kind["number"]
    assert {"Eiffel Tower", "Paris", "Gustave Eiffel", "World Fair"} <= set(by_kind["name"])
    assert "wrought iron lattice tower" in by_kind["phrase"]
    # Capital letters that only start a sentence are not names; each answer comes once.
    assert not {"The Eiffel Tower", "It", "Construction", "The"} & set(by_kind["name"])
    assert len({a.lower() for a, _ in found}) == len(found)
    assert [k for _, k in found] == sorted((k for _, k in found), key=["date", "number", "name", "phrase"].index)


def test_sentence_candidates_are_whole_sentences() -> None:
    found = Q.candidate_answers(TOWER, style="sentence")
    assert [k for _, k in found] == ["sentence"] * len(found)
    assert "Construction ended on 31 March 1889, and the tower is 330 metres tall." in [a for a, _ in found]
    assert all(a in TOWER for a, _ in found)


@pytest.fixture
def lopsided_index(tmp_path: Path, hashing_embedder):
    """One document of 12 chunks and six one-chunk documents."""
    from conftest import write_jsonl
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.retriever import Retriever

    long_text = " ".join(f"Paragraph {i} tells of Kappa{i} and the river Lambda{i} in the year {1500 + i}." for i in range(60))
    rows = [{"id": "long", "title": "Long", "text": long_text}] + [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()]
    docs = write_jsonl(tmp_path / "docs.jsonl", rows)
    cfg = IndexConfig(paths=[str(docs)], index=str(tmp_path / "idx"), embedder="hashing:64", chunk_size=48, chunk_overlap=4)
    build_index(cfg, embedder=hashing_embedder)
    return Retriever.load(cfg.index, embedder=hashing_embedder)


def test_chunks_are_sampled_across_documents_with_the_seed(lopsided_index) -> None:
    store = lopsided_index.store
    n_docs = len({c.doc_id for c in store.iter_chunks()})
    assert len(store) > n_docs + 5  # the long document has many chunks
    first = [c.doc_id for c in Q.sample_chunks(store, seed=0)]
    assert len(first) == len(store) and len(set(c for c in first)) == n_docs
    assert len(set(first[:n_docs])) == n_docs  # every document once before any document twice
    assert first == [c.doc_id for c in Q.sample_chunks(store, seed=0)]
    other = [c.id for c in Q.sample_chunks(store, seed=1)]
    assert other != [c.id for c in Q.sample_chunks(store, seed=0)]
    assert sorted(other) == sorted(c.id for c in store.iter_chunks())


@pytest.mark.parametrize("reply,expected", [
    ("Question: When was the tower finished?\nAnswer: 1889", "When was the tower finished?"),
    ("1. \"Who designed the tower?\" It was Eiffel.", "Who designed the tower?"),
    ("What city holds the tower", "What city holds the tower?"),
    ("\n\nQ: Which metal?", ""),  # too short to be a question
    ("", ""),
])
def test_parse_question(reply: str, expected: str) -> None:
    assert Q.parse_question(reply) == expected


# ---------------------------------------------------------------------------------------------
# The round trip, with a scripted question writer
# ---------------------------------------------------------------------------------------------


class ScriptedModel:
    """A question writer whose replies are looked up by the answer (question prompts) or the
    question (answer prompts); records every conversation it was sent."""

    name = "scripted"

    def __init__(self, questions: dict[str, str], answers: dict[str, str]) -> None:
        self.questions, self.answers, self.calls = questions, answers, []

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        return self.chat_batch([messages], max_new_tokens)[0]

    def chat_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[str]:
        out = []
        for messages in conversations:
            self.calls.append(messages)
            user = messages[-1]["content"]
            if messages[0]["content"] == Q.QUESTION_SYSTEM:
                out.append(self.questions.get(user.rsplit("whose answer is: ", 1)[1], ""))
            else:
                out.append(self.answers.get(user.rsplit("Question: ", 1)[1], "no idea"))
        return out


def _candidate(retriever, doc_id: str, answer: str) -> Q.Candidate:
    chunk = next(c for c in retriever.store.iter_chunks() if c.doc_id == doc_id)
    assert answer in chunk.text
    return Q.Candidate(chunk.id, chunk.doc_id, chunk.text, answer, "name")


@pytest.fixture
def retriever(small_index, hashing_embedder):
    from rag_pipeline.index.retriever import Retriever

    return Retriever.load(small_index[0], embedder=hashing_embedder)


def test_round_trip_keeps_and_drops_the_right_pairs(retriever) -> None:
    cands = {
        "good": _candidate(retriever, "python", "Guido van Rossum"),
        "malformed": _candidate(retriever, "moon", "Earth"),
        "leak": _candidate(retriever, "nile", "Mediterranean Sea"),
        "offtopic": _candidate(retriever, "rust", "garbage collector"),
        "wrong": _candidate(retriever, "everest", "Himalayas"),
        "first": _candidate(retriever, "eiffel", "Paris"),
        "dup": _candidate(retriever, "eiffel", "World Fair"),
    }
    q = {
        "Guido van Rossum": "Who created the Python programming language in 1991?",
        "Earth": "ok",  # not a question
        "Mediterranean Sea": "Does the Nile flow into the Mediterranean Sea?",
        "garbage collector": "Which high level language did Guido van Rossum create in 1991?",  # retrieves Python, not Rust
        "Himalayas": "Where is Mount Everest, the highest mountain above sea level, located?",
        "Paris": "In which city is the wrought iron lattice Eiffel Tower?",
        "World Fair": "In which city is the wrought iron lattice Eiffel Tower located?",  # near-duplicate of the last
    }
    a = {q["Guido van Rossum"]: "Guido van Rossum", q["Himalayas"]: "In the Alps", q["Paris"]: "Paris",
         q["World Fair"]: "for the World Fair", q["garbage collector"]: "garbage collector"}
    model = ScriptedModel(q, a)
    s = Q.QuestionSettings(n=10, top_k=1, hybrid=False)
    pairs = Q.write_questions(list(cands.values()), model, s)
    Q.round_trip(pairs, retriever, model, s, kept_keys=[])
    fate = {name: p.dropped for name, p in zip(cands, pairs)}
    assert fate == {"good": None, "malformed": "malformed", "leak": "leaks_answer", "offtopic": "retrieval",
                    "wrong": "answer_mismatch", "first": None, "dup": "duplicate"}
    good = pairs[0]
    assert good.rank == 1 and good.f1 == 1.0 and good.reply == "Guido van Rossum"
    # The answering model was asked only about questions that passed the earlier filters, shown their own chunk.
    asked = [m[-1]["content"] for m in model.calls if m[0]["content"] != Q.QUESTION_SYSTEM]
    assert len(asked) == 4 and all(f"Question: {p.question}" in u and p.candidate.passage in u
                                   for p, u in zip([pairs[0], pairs[4], pairs[5], pairs[6]], asked))


def test_generate_reports_counts_and_is_deterministic(retriever) -> None:
    from rag_pipeline.data.teacher import FakeTeacher

    s = Q.QuestionSettings(n=4, top_k=3, hybrid=False, seed=0)
    a = Q.generate(retriever, FakeTeacher(), s)
    b = Q.generate(retriever, FakeTeacher(), s)
    assert [(i.id, i.question, i.answers, i.doc_id) for i in a.items] == [(i.id, i.question, i.answers, i.doc_id) for i in b.items]
    r = a.report
    assert r["kept"] == len(a.items) == 4
    assert r["written"] == r["kept"] + r["unused_surplus"] + sum(r["dropped"].values())
    assert len(a.dropped) == sum(r["dropped"].values()) and {p.dropped for p in a.kept} == {None}
    for item in a.items:  # every kept answer is in a chunk of its document
        chunks = retriever.store.chunks_of_docs([item.doc_id])[item.doc_id]
        assert any(item.answers[0] in c.text for c in chunks)
    c = Q.generate(retriever, FakeTeacher(), Q.QuestionSettings(n=4, top_k=3, hybrid=False, seed=1))
    assert [i.question for i in c.items] != [i.question for i in a.items]


def test_no_surviving_question_is_a_clear_error(retriever) -> None:
    model = ScriptedModel({}, {})  # never writes a question
    with pytest.raises(InputError, match=r"no generated question survived the filters .*malformed"):
        Q.generate(retriever, model, Q.QuestionSettings(n=2, hybrid=False))


# ---------------------------------------------------------------------------------------------
# The rules writer and the round trip's readers
# ---------------------------------------------------------------------------------------------


def _rules(passage: str, answer: str, kind: str) -> str:
    return Q.rules_question(Q.Candidate("c", "d", passage, answer, kind))


@pytest.mark.parametrize("passage, answer, kind, expected", [
    ("Intro. The Royal University of Warsaw was established in 1816.", "1816", "number", "The Royal University of Warsaw was established in what year?"),
    ("In early August, Montcalm led 7,000 troops to the fort.", "7,000", "number", "In early August, Montcalm led how many troops to the fort?"),
    ("In 1940 the city was 94.0% white.", "94.0", "number", "In 1940 the city was what percentage white?"),
    ("Kublai's government after 1262 was a compromise.", "Kublai", "name", "Whose government after 1262 was a compromise?"),
    ("However, the Lisbon Treaty was enacted in its place.", "Lisbon Treaty", "name", "What was enacted in its place?"),
    ("As of 31 March 2008, Sky had 3,393,000 Sky+ users.", "31 March 2008", "date", "As of what date, Sky had 3,393,000 Sky+ users?"),
    ("Transform boundaries, such as the San Andreas fault system (in California), caused earthquakes.", "San Andreas", "name",
     "Transform boundaries, such as what fault system, caused earthquakes?"),
    ("Paris is big. Paris is old.", "Paris", "name", "What is big?"),  # the first sentence holding the answer
])
def test_rules_writer_puts_a_wh_phrase_in_place_of_the_answer(passage: str, answer: str, kind: str, expected: str) -> None:
    q = _rules(passage, answer, kind)
    assert q == expected
    assert not Q.leaks_answer(q, answer, "span")


@pytest.mark.parametrize("passage, answer, kind", [
    ("Meetings take place on Tuesday, Wednesday and Thursday.", "Wednesday", "name"),  # one item of a list
    ("Meetings take place on Tuesday, Wednesday and Thursday.", "Tuesday", "name"),
    ("It was founded in 1806 by the king.", "1806", "number"),  # about "it": the question would not say what
    ("In the 2013–2014 school year fifteen courses were required.", "2014", "number"),  # half of a range
    ("The 2004 Treaty never came into force.", "2004", "number"),  # a year used as a word
    ("Some 5 million people lived there.", "5", "number"),  # a bare number: "Some what number million"
    ("She said “the tower is 330 metres tall” twice.", "330", "number"),  # a quotation
    ("The tower is a landmark.", "landmark", "sentence"),  # rules write span questions only
])
def test_rules_writer_refuses_ambiguous_rewrites(passage: str, answer: str, kind: str) -> None:
    assert _rules(passage, answer, kind) == ""


def test_rules_writer_with_a_reader_generates_deterministically(retriever) -> None:
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.data.teacher import FakeTeacher

    class SpanReader:  # answers with the word(s) the question left out of its sentence, like a perfect reader
        def __init__(self) -> None:
            self.asked: list[str] = []

        def answers(self, pairs: list[Q.Pair], s: Q.QuestionSettings) -> list[str]:
            self.asked += [p.question for p in pairs]
            return [p.candidate.answer if len(p.candidate.answer) % 2 else "wrong" for p in pairs]

    s = Q.QuestionSettings(n=3, top_k=3, hybrid=False, seed=0)
    reader = SpanReader()
    a = Q.generate(retriever, Q.RulesWriter(), s, reader)
    b = Q.generate(retriever, Q.RulesWriter(), s, SpanReader())
    assert [(i.question, i.answers) for i in a.items] == [(i.question, i.answers) for i in b.items]
    assert a.report["kept"] == 3 and all(len(i.answers[0]) % 2 for i in a.items)
    assert all(i.question.endswith("?") and i.answers[0] not in i.question for i in a.items)
    assert a.report["dropped"]["answer_mismatch"] == sum(len(p.candidate.answer) % 2 == 0 for p in a.dropped if p.f1 is not None)
    assert reader.asked and set(reader.asked) >= {i.question for i in a.items}
    with pytest.raises(ConfigError, match="rules writer cannot answer"):
        Q.generate(retriever, Q.RulesWriter(), s)  # no reader: the rules writer has no model to answer with
    assert Q.generate(retriever, FakeTeacher(), s).report["kept"] == 3  # a chat model writes and reads


def test_candidates_come_in_passes_until_every_chunk_is_used_up(retriever) -> None:
    from collections import Counter

    counts: Counter = Counter()
    s = Q.QuestionSettings(n=1, per_chunk=2, seed=0)
    got = list(Q.candidate_stream(retriever.store, s, counts))
    chunks = list(retriever.store.iter_chunks())
    every = {(c.id, a) for c in chunks for a, _ in Q.candidate_answers(c.text)}
    assert {(c.chunk_id, c.answer) for c in got} == every and len(got) == len(every)  # each candidate once, all of them
    first_pass = got[: sum(min(2, len(Q.candidate_answers(c.text))) for c in chunks)]
    assert len({c.chunk_id for c in first_pass}) == len([c for c in chunks if Q.candidate_answers(c.text)])  # every chunk before seconds
    assert counts["chunks"] == len(chunks) and counts["exhausted"] == 1


def test_adapter_reader_takes_the_best_non_abstaining_answer_from_the_chunk() -> None:
    from rag_pipeline.answer.ask import ABSTAIN

    class Ans:
        def __init__(self, raw: str) -> None:
            self.raw, self.abstained = raw, raw == ABSTAIN

    class Pipe:
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def answer_batch(self, questions, contexts=None, margins=False, grounded=None):
            self.calls.append({"questions": questions, "contexts": contexts, "margins": margins})
            return [Ans(ABSTAIN if "fog" in q else "Agnes Corran [1]") for q in questions]

    pipe = Pipe()
    pairs = [Q.Pair(Q.Candidate(f"c{i}", "d", "Agnes Corran designed it. Fog came.", "Agnes Corran", "name"), q)
             for i, q in enumerate(["Who designed it?", "What came, the fog?", "Who designed it again?"])]
    out = Q.AdapterReader(pipe).answers(pairs, Q.QuestionSettings(n=1, batch_size=2))
    assert out == ["Agnes Corran", "", "Agnes Corran"]
    assert [len(c["questions"]) for c in pipe.calls] == [2, 1] and all(c["margins"] for c in pipe.calls)
    assert pipe.calls[0]["contexts"][0] == [{"id": "c0", "doc_id": "d", "title": "", "text": "Agnes Corran designed it. Fog came."}]


def test_question_models_follow_the_config(small_index, tmp_path: Path) -> None:
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.data.raft import RaftConfig, question_models
    from rag_pipeline.data.teacher import FakeTeacher

    base = dict(index=str(small_index[0]), output=str(tmp_path / "o"), generate_questions=2, qa_dir="")
    writer, reader = question_models(RaftConfig(**base, question_generator="fake"), None)
    assert isinstance(writer, FakeTeacher) and reader is None  # the writer reads
    writer, reader = question_models(RaftConfig(**base, question_reader="fake"), None)
    assert isinstance(writer, Q.RulesWriter) and isinstance(reader, FakeTeacher)
    with pytest.raises(InputError, match="question reader adapter .*nowhere does not exist"):
        question_models(RaftConfig(**base, question_reader=f"adapter:{tmp_path / 'nowhere'}"), None)
    with pytest.raises(ConfigError, match="rules writes questions for span answers"):
        question_models(RaftConfig(**base, question_style="sentence", question_reader="fake"), None)


# ---------------------------------------------------------------------------------------------
# hf: backend on a tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def test_hf_backend_batches_greedy_like_one_by_one(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_pipeline.data.teacher import load_teacher

    teacher = load_teacher(f"hf:{tiny_llama}")
    convs = [[{"role": "system", "content": "You answer."}, {"role": "user", "content": f"The {a} near the river is red. What colour?"}]
             for a in ("cat", "dog", "owl is very very far away and")]
    batched = teacher.chat_batch(convs, max_new_tokens=6)
    assert batched == [teacher.chat(c, max_new_tokens=6) for c in convs]
    # Against plain transformers greedy decoding of the same chat text.
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = tok.apply_chat_template(convs[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert batched[0] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert any(batched)


def test_hf_backend_drives_question_generation(tiny_llama: Path, retriever) -> None:
    from rag_pipeline.data.teacher import load_teacher

    teacher = load_teacher(f"hf:{tiny_llama}")
    try:
        result = Q.generate(retriever, teacher, Q.QuestionSettings(n=2, hybrid=False, max_new_tokens=8, max_rounds=1))
        report = result.report
    except InputError as e:  # an untrained model's questions rarely survive: the error must say why
        assert "no generated question survived" in str(e)
        return
    assert report["written"] >= report["kept"] >= 1


# ---------------------------------------------------------------------------------------------
# openai: backend against a real server process on loopback
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub_server():
    """The stub chat-completions server (tests/openai_stub_server.py) on a free loopback port; stopped by its PID."""
    proc = subprocess.Popen([sys.executable, str(HERE / "openai_stub_server.py")], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        os.kill(proc.pid, 15)
        proc.wait(timeout=10)


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stats", timeout=5) as r:
        return json.loads(r.read())


def test_openai_backend_chats_and_generates_questions(stub_server: str, retriever) -> None:
    from rag_pipeline.data.teacher import load_teacher

    teacher = load_teacher(f"openai:{stub_server}#qa")
    conv = [{"role": "system", "content": Q.QUESTION_SYSTEM},
            {"role": "user", "content": Q.QUESTION_USER.format(passage=TOPICS["moon"][1], answer="27 days")}]
    assert teacher.chat(conv) == "Which words complete: The Moon is the only natural satellite of Earth and orbits it every ____?"
    result = Q.generate(retriever, teacher, Q.QuestionSettings(n=3, top_k=2, hybrid=False))
    assert len(result.items) == 3 and result.report["kept"] == 3
    assert all(p.f1 == 1.0 and p.rank is not None and p.rank <= 2 for p in result.kept)


def test_openai_backend_retries_then_succeeds(stub_server: str) -> None:
    from rag_pipeline.data.teacher import OpenAITeacher

    teacher = OpenAITeacher(f"{stub_server}#flaky", timeout=5, retries=3, backoff=0.01)
    conv = [{"role": "system", "content": "x"}, {"role": "user", "content": "Passage: A b.\n\nQuestion: none"}]
    assert teacher.chat(conv) == "unknown"
    assert _stats(stub_server)["flaky"] == 3  # two 503s, then the answer


@pytest.mark.parametrize("model,match", [
    ("error500", r"HTTP 500 \(the model crashed\)"),
    ("malformed", r"malformed JSON"),
    ("slow", r"timed out after 0\.5 s"),
])
def test_openai_backend_errors_are_retried_then_one_line(stub_server: str, model: str, match: str) -> None:
    from rag_pipeline.data.teacher import OpenAITeacher

    before = _stats(stub_server).get(model, 0)
    teacher = OpenAITeacher(f"{stub_server}#{model}", timeout=0.5, retries=2, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match) as err:
        teacher.chat([{"role": "user", "content": "hi"}])
    message = str(err.value)
    assert "\n" not in message and "failed after 2 attempts" in message and stub_server in message
    assert time.perf_counter() - t0 < 5  # bounded: 2 attempts of at most 0.5 s each
    time.sleep(0.1 if model != "slow" else 3.2)  # let the slow server finish its last request before counting
    assert _stats(stub_server)[model] - before == 2


def test_openai_backend_failure_leaves_nothing_written(stub_server: str, small_index, tmp_path: Path) -> None:
    from rag_pipeline.data.raft import RaftConfig, run

    out = tmp_path / "raft"
    cfg = RaftConfig(index=str(small_index[0]), output=str(out), generate_questions=2, question_generator=f"openai:{stub_server}#error500",
                     generator="sentence-transformers/all-MiniLM-L6-v2", num_distractors=1, request_retries=2, format=[])
    with pytest.raises(InputError, match="HTTP 500"):
        run(cfg)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["docs", "idx"]


def test_near_duplicates_share_their_names_and_most_words() -> None:
    kept = [Q.question_key("In which city is the wrought iron lattice Eiffel Tower?")]
    assert Q.is_duplicate(Q.question_key("In which city is the wrought iron lattice Eiffel Tower located?"), kept, 0.8)
    assert not Q.is_duplicate(Q.question_key("Which company built the wrought iron lattice Eiffel Tower?"), kept, 0.8)  # other words
    town = [Q.question_key("Which words complete: The town of Alpha3 lies near the river ____?")]
    assert not Q.is_duplicate(Q.question_key("Which words complete: The town of Alpha4 lies near the river ____?"), town, 0.8)  # other name


# ---------------------------------------------------------------------------------------------
# Yes/no and unanswerable questions written by rule
# ---------------------------------------------------------------------------------------------

POOL = Q.EntityPool({"date": ("4 July 1776",), "year": ("1850", "1889", "1991"), "number": ("27 days", "330 metres"),
                     "name": ("Gustave Eiffel", "Mount Fuji", "Nile", "Rome", "Rust")})


@pytest.mark.parametrize("passage,answer,kind,polarity,question,target", [
    ("The Eiffel Tower was completed in 1889 for the World Fair.", "1889", "date", "yes",
     "Was the Eiffel Tower completed in 1889 for the World Fair?", "Yes"),
    ("In 1991 Guido van Rossum created Python.", "Guido van Rossum", "name", "yes",
     "Is it true that in 1991 Guido van Rossum created Python?", "Yes"),
])
def test_yes_questions_state_the_sentence_faithfully(passage: str, answer: str, kind: str, polarity: str, question: str, target: str) -> None:
    import random

    c = Q.Candidate("c", "d", passage, answer, kind)
    assert Q.write_yes_no(c, POOL, polarity, random.Random(0)) == (question, target)


def test_no_questions_swap_the_fact_for_another_of_its_kind_from_the_corpus() -> None:
    import random

    c = Q.Candidate("c", "d", "The Eiffel Tower was completed in 1889 for the World Fair.", "1889", "date")
    for seed in range(5):
        question, target = Q.write_yes_no(c, POOL, "no", random.Random(seed))
        assert target == "No" and question.startswith("Was the Eiffel Tower completed in ") and "1889" not in question
        assert any(y in question for y in ("1850", "1991"))  # a year for a year, never a name or a count
    # a name is swapped for a name of as many words that the passage does not mention
    c = Q.Candidate("c", "d", "Paris is the capital of France and lies on the Seine. Many visit Paris.", "Paris", "name")
    q, _ = Q.write_yes_no(c, POOL, "no", random.Random(1))
    assert q.startswith("Is ") and q.endswith(" the capital of France and lies on the Seine?") and "Paris" not in q


def test_no_questions_can_swap_the_fact_for_another_the_same_passage_mentions() -> None:
    """--question-no-swap passage: the swapped fact is one of its kind that the passage states elsewhere, so the
    question holds only the passage's words; none is written where the passage has no other fact of the kind."""
    import random

    passage = ("The Eiffel Tower was completed in 1889 for the World Fair. It was repainted in 1968, and in March 1889 "
               "Gustave Eiffel climbed it with Lord Kelvin. Over 7 million people visit it every year.")
    c = Q.Candidate("c", "d", passage, "1889", "date")
    for seed in range(8):  # 1968 is the passage's one other year ("March 1889" is a date, and holds the fact)
        question, target = Q.write_yes_no(c, POOL, "no", random.Random(seed), swap="passage")
        assert target == "No" and question == "Was the Eiffel Tower completed in 1968 for the World Fair?"
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0), swap="passage") == Q.write_yes_no(c, POOL, "yes", random.Random(0))
    # a name for a name of as many words that the passage mentions outside the sentence, sharing no word with it
    sentence = "It was repainted in 1968, and in March 1889 Gustave Eiffel climbed it with Lord Kelvin."
    assert {Q.passage_swap("Gustave Eiffel", "name", passage, sentence, random.Random(seed)) for seed in range(12)} == {"World Fair"}
    # a fact of the same sentence, in its parentheses or another clause, is never the swap: the "no" would be true
    c = Q.Candidate("c", "d", "The tower was built by Eiffel and Koechlin in 1889. Later Sauvestre and Nouguier joined.", "Eiffel", "name")
    for seed in range(8):
        question, _ = Q.write_yes_no(c, POOL, "no", random.Random(seed), "short", swap="passage")
        assert question in {"Was the tower built by Sauvestre?", "Was the tower built by Nouguier?"}
    c = Q.Candidate("c", "d", "The capital of China is Beijing (Peking) since 1949.", "Beijing", "name")
    assert Q.write_yes_no(c, POOL, "no", random.Random(0), swap="passage") == ("", "")
    # whole words: "7" does not rule out "17" or "70"
    c = Q.Candidate("c", "d", "The town had 7 houses in 1900. By 1950 it had 17 houses and 70 shops.", "7", "number")
    assert {Q.write_yes_no(c, POOL, "no", random.Random(seed), swap="passage")[0] for seed in range(8)} == {
        "Had the town 17 houses in 1900?", "Had the town 70 houses in 1900?"}
    # no other fact of its kind in the passage: no "no" question, rather than one with a word the passage lacks
    c = Q.Candidate("c", "d", "The Eiffel Tower was completed in 1889 for the World Fair.", "1889", "date")
    assert Q.write_yes_no(c, POOL, "no", random.Random(0), swap="passage") == ("", "")
    assert Q.write_yes_no(c, POOL, "no", random.Random(0), swap="corpus")[0] != ""


@pytest.mark.parametrize("word,base", [
    ("designed", "design"), ("created", "create"), ("stopped", "stop"), ("studied", "study"), ("tried", "try"),
    ("added", "add"), ("controlled", "control"), ("received", "receive"), ("joined", "join"), ("caused", "cause"),
    ("won", "win"), ("built", "build"), ("founded", "found"),
    # not a simple past, or as well a noun ("left", "rose"), or "be"/"have" (moved to the front instead)
    ("hundred", None), ("need", None), ("tower", None), ("Designed", None), ("left", None), ("rose", None),
    ("was", None), ("had", None), ("1990s", None),
])
def test_a_simple_past_verb_has_its_base_form_and_other_words_none(word: str, base: str | None) -> None:
    assert Q.past_base(word) == base


@pytest.mark.parametrize("passage,answer,yes,no", [
    # the clause's tail after the fact goes; "no" swaps the fact in the same short question
    ("The Eiffel Tower was completed in 1889 for the World Fair.", "1889",
     "Was the Eiffel Tower completed in 1889?", "Was the Eiffel Tower completed in {}?"),
    # a simple past asked with "did", its verb in the base form; a relative clause after the fact goes
    ("The company created 1850 jobs in the town, which pleased the mayor.", "1850",
     "Did the company create 1850 jobs?", "Did the company create {} jobs?"),
    ("Robert Oppenheimer met Enrico Fermi at Berkeley in 1942.", "1942",
     "Did Robert Oppenheimer meet Enrico Fermi at Berkeley in 1942?", "Did Robert Oppenheimer meet Enrico Fermi at Berkeley in {}?"),
    # a participle in the subject is not its verb; "had" as the main verb is asked with "did ... have"
    ("The newly formed government passed a law in 1942.", "1942",
     "Did the newly formed government pass a law in 1942?", "Did the newly formed government pass a law in {}?"),
    ("The company had 1942 employees in 1990.", "1942",
     "Did the company have 1942 employees in 1990?", "Did the company have {} employees in 1990?"),
    # a short leading phrase that holds the fact goes after its clause; a range and a number's comma stay whole
    ("In 1942, the factory was sold to Daewoo, a carmaker.", "1942",
     "Was the factory sold to Daewoo in 1942?", "Was the factory sold to Daewoo in {}?"),
    ("Napoleon ruled France between 1804 and 1815 as emperor. Later Napoleon lost.", "1804",
     "Did Napoleon rule France between 1804 and 1815?", "Did Napoleon rule France between {} and 1815?"),
    ("The population was 1942 in 1900 and grew.", "1942",
     "Was the population 1942 in 1900?", "Was the population {} in 1900?"),
    # no short subject before a verb: the whole sentence, as the sentence form writes it
    ("Prior to its launch, BSkyB had 40,000 people registered in 2005.", "2005",
     "Is it true that prior to its launch, BSkyB had 40,000 people registered in 2005?",
     "Is it true that prior to its launch, BSkyB had 40,000 people registered in {}?"),
])
def test_short_yes_no_questions_ask_the_facts_clause_as_people_ask(passage: str, answer: str, yes: str, no: str) -> None:
    """``no``: the "no" question with the swapped year as {} (another year of the pool that the passage lacks)."""
    import random

    c = Q.Candidate("c", "d", passage, answer, "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0), "short") == (yes, "Yes")
    swapped, target = Q.write_yes_no(c, POOL, "no", random.Random(0), "short")
    assert target == "No" and swapped in {no.format(year) for year in ("1850", "1889", "1991") if year not in passage}


def test_the_short_form_falls_back_to_the_sentence_form_where_its_clause_has_no_question() -> None:
    import random

    # "was" follows a clause, not a subject ("the tower stands tall and | was finished"): the sentence form's question
    c = Q.Candidate("c", "d", "Later the tower stands 330 metres tall and was finished in 1889.", "1889", "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0), "short") == Q.write_yes_no(c, POOL, "yes", random.Random(0))
    assert Q.clause_parts("") is None and Q.short_yes_no_question("Paris") is None


@pytest.mark.parametrize("form", ["sentence", "short"])
def test_a_fact_that_is_not_a_whole_word_of_the_statement_gives_no_yes_no_question(form: str) -> None:
    """A "no" question must not keep its fact: none is written where the statement lowered the answer (its first
    word, a name found nowhere else) or holds it only inside another word ("2" of "O2")."""
    import random

    for passage, answer in (("Berlin hosted the Olympic Games in 1936.", "Berlin"), ("O2 molecules were found in 2 samples.", "2")):
        c = Q.Candidate("c", "d", passage, answer, "name")
        assert Q.write_yes_no(c, POOL, "no", random.Random(0), form) == ("", "")  # type: ignore[arg-type]
    c = Q.Candidate("c", "d", "The probe found 27 days of data in 1889.", "1889", "date")
    question, _ = Q.write_yes_no(c, POOL, "no", random.Random(0), form)  # type: ignore[arg-type]
    assert "1889" not in question and ("1850" in question or "1991" in question)


def test_the_yes_no_form_setting_reaches_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_pipeline.data import raft
    from rag_pipeline.errors import ConfigError

    seen = []
    monkeypatch.setattr(raft, "question_models", lambda cfg, retriever: (None, None))
    monkeypatch.setattr(raft, "generate_questions", lambda retriever, writer, settings, reader: seen.append(settings))
    raft.generated_questions(raft.RaftConfig(generate_questions=10, question_yes_no=1.0, question_yes_no_form="short",
                                             question_no_swap="passage"), None)
    assert seen[0].yes_no_form == "short" and seen[0].yes_no == 1.0 and seen[0].no_swap == "passage"
    with pytest.raises(ConfigError, match="question_yes_no_form"):
        Q.QuestionSettings(n=10, yes_no_form="long")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="question_no_swap"):
        Q.QuestionSettings(n=10, no_swap="nearby")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--question-yes-no is 0"):
        raft.RaftConfig(generate_questions=10, question_no_swap="passage")


def test_unanswerable_questions_swap_the_anchor_the_passage_answers_about() -> None:
    import random

    passage = "In early August, Montcalm led 7,000 troops to the fort."
    c = Q.Candidate("c", "d", passage, "7,000", "number")
    answerable = Q.rules_question(c)
    assert answerable == "In early August, Montcalm led how many troops to the fort?"
    q = Q.write_unanswerable(c, POOL, random.Random(0))
    assert q and q != answerable and "Montcalm" not in q and q.endswith(" led how many troops to the fort?")
    assert Q.write_unanswerable(Q.Candidate("c", "d", "It led 7,000 troops.", "7,000", "number"), POOL, random.Random(0)) == ""


def test_generate_writes_each_form_to_its_share_with_the_right_targets(retriever) -> None:
    from rag_pipeline.data.teacher import FakeTeacher

    s = Q.QuestionSettings(n=6, top_k=6, hybrid=False, seed=0, yes_no=0.34, unanswerable=0.34)
    assert Q.form_quota(s) == {"span": 2, "yes": 1, "no": 1, "unanswerable": 2}
    r = Q.generate(retriever, FakeTeacher(), s)
    forms = r.report["forms"]
    assert sum(forms.values()) == len(r.items) and forms["span"] >= 1 and forms["yes"] + forms["no"] + forms["unanswerable"] >= 1
    for p, item in zip(r.kept, r.items):
        if p.form == "span":
            assert item.answerable and item.answers == [p.candidate.answer] and item.context is None
        elif p.form == "unanswerable":
            assert not item.answerable and item.answers == [] and item.context == p.candidate.passage
        else:
            assert item.answers == [p.form.capitalize()] and item.context == p.candidate.passage
    again = Q.generate(retriever, FakeTeacher(), s)
    assert [(i.question, i.answers) for i in again.items] == [(i.question, i.answers) for i in r.items]
    # the default writes span questions only, and says nothing of forms
    assert "forms" not in Q.generate(retriever, FakeTeacher(), Q.QuestionSettings(n=2, top_k=6, hybrid=False)).report


def test_the_forms_keep_their_share_when_span_questions_use_every_candidate(retriever) -> None:
    """Many questions asked of a small corpus: the span questions exhaust the candidates, and the yes/no and
    unanswerable ones are written from a second reading of the chunks instead of not at all."""
    from rag_pipeline.data.teacher import FakeTeacher

    s = Q.QuestionSettings(n=400, top_k=6, hybrid=False, seed=0, yes_no=0.25, unanswerable=0.15)
    r = Q.generate(retriever, FakeTeacher(), s)
    forms = r.report["forms"]
    assert forms["span"] < Q.form_quota(s)["span"]  # the candidates ran out before the span questions' share was met
    assert forms["yes"] >= 1 and forms["no"] >= 1 and forms["unanswerable"] >= 1


def test_question_form_shares_are_checked() -> None:
    from rag_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="together at most 1"):
        Q.QuestionSettings(n=4, yes_no=0.7, unanswerable=0.5)


@pytest.mark.parametrize("passage,answer", [
    ("A colony was built in 1564 on the banks of the St. Johns River by Ribault.", "1564"),
    ("The manifesto (known in 1964 as Milestones, a.k.a. Signposts) was read widely.", "1964"),
    # cut inside a sentence (by the splitter or the chunker) or a reference list: no letter or digit opens the statement
    (", about a third of the Isel population had already perished by 1350.", "1350"),
    ("<Uyless Black, Frame Relay Networks, IEEE Computer Society, 1991 > was cited by many.", "1991"),
    (".25 its packet IDs were set in 1976 by the CCITT.", "1976"),  # a chunk that opens inside "X.25"
])
def test_statements_cut_by_the_sentence_splitter_are_not_written(passage: str, answer: str) -> None:
    import random

    c = Q.Candidate("c", "d", passage, answer, "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0)) == ("", "")


def test_a_sentence_start_capital_is_lowered_unless_the_word_is_a_name() -> None:
    import random

    c = Q.Candidate("c", "d", "Prior to its launch, BSkyB had 40,000 people registered in 2005.", "2005", "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0))[0] == "Is it true that prior to its launch, BSkyB had 40,000 people registered in 2005?"
    c = Q.Candidate("c", "d", "Newton unified gravity in 1687. Later Newton wrote more.", "1687", "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0))[0] == "Is it true that Newton unified gravity in 1687?"


@pytest.mark.parametrize("passage,answer,question", [
    ("In 2005 the factory was sold to AvtoZAZ by Daewoo.", "2005", "Is it true that in 2005 the factory was sold to AvtoZAZ by Daewoo?"),
    ("To the south is the Mexico border, which was drawn in 1848.", "1848", "Is it true that to the south is the Mexico border, which was drawn in 1848?"),
    ("EU Regulations are directly applicable since 1958 in every state.", "1958", "Are EU Regulations directly applicable since 1958 in every state?"),
    ("Robert Oppenheimer met Enrico Fermi at Berkeley in 1942.", "1942", "Is it true that Robert Oppenheimer met Enrico Fermi at Berkeley in 1942?"),
    ("He met J. Robert Oppenheimer at Berkeley in 1942 during the war.", "1942", ""),  # half a sentence after "J."
])
def test_yes_no_questions_invert_only_a_plain_subject_and_keep_names(passage: str, answer: str, question: str) -> None:
    import random

    c = Q.Candidate("c", "d", passage, answer, "date")
    assert Q.write_yes_no(c, POOL, "yes", random.Random(0))[0] == question
