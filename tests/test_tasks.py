"""Task targets written by rules (rag_pipeline.data.tasks), against hand-written cases."""

from __future__ import annotations

import json
import random

import pytest

from rag_pipeline.answer import structured, summary
from rag_pipeline.data import tasks
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.prompt import ABSTAIN

NORMANS = ("The Normans (Norman: Nourmands) were the people who gave their name to Normandy, a region in France. "
           "They were descended from Norse raiders. Their leader Rollo swore fealty to King Charles III. "
           "The Norman name of Normandy comes from the Norse raiders.")


def test_the_mixture_is_parsed_normalised_and_drawn_with_its_shares() -> None:
    assert tasks.parse_mixture("qa") == {"qa": 1.0}
    assert tasks.parse_mixture("summary=1,qa=3") == {"qa": 0.75, "summary": 0.25}  # in TASKS order
    assert tasks.parse_mixture("qa=0.5,extract=0.5,summary=0") == {"qa": 0.5, "extract": 0.5}
    for bad, match in (("poem", "unknown task 'poem'"), ("qa=x", "not a number"), ("qa=-1", "weight >= 0"), ("qa=1,qa=2", "once"),
                       ("qa=nan,summary=1", "weight >= 0"), ("qa=inf", "weight >= 0"),
                       ("qa=0", "no task has a positive weight"), ("", "no task")):
        with pytest.raises(ConfigError, match=match):
            tasks.parse_mixture(bad)
    rng = random.Random(0)
    drawn = [tasks.draw({"qa": 0.6, "summary": 0.2, "extract": 0.2}, rng) for _ in range(5000)]
    assert drawn.count("qa") / 5000 == pytest.approx(0.6, abs=0.03) and drawn.count("extract") / 5000 == pytest.approx(0.2, abs=0.03)
    assert tasks.draw({"summary": 1.0}, rng) == "summary"


def test_the_summary_is_the_answers_sentence_and_those_about_the_question_each_cited() -> None:
    said = tasks.summary_sentences("Where does the name of Normandy come from?", NORMANS, ["Normans"])
    # the answer's sentence without its parentheses, then the one sharing "name"/"Normandy" with the question
    assert said == ["The Normans were the people who gave their name to Normandy, a region in France",
                    "The Norman name of Normandy comes from the Norse raiders"]
    target = tasks.summary_target(said, 1)
    assert target == ("The Normans were the people who gave their name to Normandy, a region in France [2]. "
                      "The Norman name of Normandy comes from the Norse raiders [2].")
    assert summary.sentences_of(target) == [(s, [2]) for s in said]
    assert tasks.summary_target(said, -1) == tasks.summary_target(None, 0) == ABSTAIN


def test_a_summary_without_other_sentences_about_the_question_adds_the_next_one() -> None:
    assert tasks.summary_sentences("Who swore fealty?", NORMANS, ["Rollo"]) == [
        "Their leader Rollo swore fealty to King Charles III", "The Norman name of Normandy comes from the Norse raiders"]


def test_a_given_summary_is_cut_into_sentences_the_grammar_holds_or_refused() -> None:
    assert tasks.given_summary("Rollo led the Normans.  They settled in Normandy (France).") == [
        "Rollo led the Normans", "They settled in Normandy"]
    assert tasks.given_summary("He went to St. Louis in May. It rained.") is None  # a full stop inside a sentence
    assert tasks.given_summary("One. Two. Three. Four. Five.") is None  # more sentences than a summary holds
    assert tasks.given_summary("   ") is None


def test_a_summary_the_grammar_cannot_hold_is_not_written() -> None:
    assert tasks.summary_sentences("Where did he go?", "He went to St. Louis in May. It rained.", ["St. Louis"]) is None
    assert tasks.summary_sentences("Who?", NORMANS, ["Vikings of Iceland"]) is None  # no sentence holds the answer


def test_the_json_target_copies_the_answer_and_its_sentence_or_is_null() -> None:
    obj = json.loads(tasks.extract_target(NORMANS, ["rollo"]))
    assert obj == {"answer": "Rollo", "quote": "Their leader Rollo swore fealty to King Charles III."}  # spelled as the passage does
    assert tasks.extract_target(None, ["Rollo"]) == tasks.extract_target(NORMANS, []) == '{"answer":null,"quote":null}'
    for text in (tasks.extract_target(NORMANS, ["Rollo"]), tasks.extract_target(None, [])):
        assert structured.parse(text, tasks.EXTRACT_SCHEMA)[1] is None


def test_the_prompt_asks_as_ask_does() -> None:
    assert tasks.asked("qa", "Who?") == "Who?"
    assert tasks.asked("summary", "Who?") == summary.instruction("Who?")
    assert tasks.asked("extract", "Who?") == structured.instruction("Who?", tasks.EXTRACT_SCHEMA)


def test_a_parenthesis_that_holds_the_answer_is_kept() -> None:
    said = tasks.summary_sentences("When was it bought?", "The Louisiana Purchase (1803) doubled the country. It was big.", ["1803"])
    assert said == ["The Louisiana Purchase (1803) doubled the country", "It was big"]


def test_the_json_answer_is_a_whole_word_and_a_passage_without_support_gives_none() -> None:
    assert json.loads(tasks.extract_target("The parish of Paris is old.", ["paris"]))["answer"] == "Paris"  # not "paris" of "parish"
    assert json.loads(tasks.extract_target("Thus the US won.", ["us"]))["answer"] == "US"
    assert tasks.extract_target("Nothing here holds it.", ["Paris"]) is None  # written as qa instead
    held = tasks.extract_target("A b\x7fc d.", ["b\x7fc"])  # DEL: escaped, as llguidance's JSON strings need
    assert "\x7f" not in held and json.loads(held)["answer"] == "b\x7fc"


def test_a_schema_is_inferred_from_the_records_own_json_answers() -> None:
    records = [{"date": "1 October 1998", "subscribers": 5, "tags": ["tv"], "owner": {"name": "BSkyB"}},
               {"date": None, "subscribers": 2.5, "launched": True}]
    schema = tasks.infer_schema(records)
    assert schema == {
        "type": "object",
        "properties": {"date": {"type": ["string", "null"]}, "subscribers": {"type": ["number", "null"]},
                       "tags": {"type": ["array", "null"], "items": {"type": ["string", "null"]}},
                       "owner": {"type": ["object", "null"], "properties": {"name": {"type": ["string", "null"]}},
                                 "required": ["name"], "additionalProperties": False},
                       "launched": {"type": ["boolean", "null"]}},
        "required": ["date", "subscribers", "tags", "owner", "launched"], "additionalProperties": False}
    assert structured.check_schema(schema, "inferred") is schema  # constrained decoding can enforce it
    assert tasks.infer_schema([{"n": 1}, {"n": 2}])["properties"]["n"] == {"type": ["integer", "null"]}
    assert list(tasks.infer_schema([{"a": "x"}] * 3 + [{"b": "y"}], sample=3)["properties"]) == ["a"]  # the sample only
    with pytest.raises(InputError, match="--schema FILE"):
        tasks.infer_schema([{}])


def test_a_records_own_json_answer_is_ordered_by_the_schema_nulls_filled_or_refused() -> None:
    schema = tasks.infer_schema([{"date": "1998", "service": "Sky Digital"}])
    assert tasks.given_extract({"service": "Sky Digital", "date": "1998"}, schema) == '{"date":"1998","service":"Sky Digital"}'
    assert tasks.given_extract({"service": "Sky Digital"}, schema) == '{"date":null,"service":"Sky Digital"}'  # it lacks the date
    assert tasks.given_extract(None, schema) == '{"date":null,"service":null}'  # the oracle is not shown: abstain
    assert tasks.given_extract({"date": 1998, "service": "x"}, schema) is None  # the wrong type
    assert tasks.given_extract({"date": "1998", "service": "x", "price": "5"}, schema) is None  # a field the schema lacks
    strict = {"type": "object", "properties": {"date": {"type": "string"}, "place": {"type": "string"}}, "required": ["date"]}
    assert tasks.given_extract(None, strict) is None  # no null allowed: no abstention object, written as qa
    assert tasks.given_extract({"date": "1998"}, strict) == '{"date":"1998"}'  # an optional field it lacks is left out
    varied = [{"o": {"a": 1}}, {"o": {"b": 2}}, {"t": ["a", None]}]  # nested keys and array items vary between records
    inferred = tasks.infer_schema(varied)
    assert [tasks.given_extract(r, inferred) for r in varied] == [
        '{"o":{"a":1,"b":null},"t":null}', '{"o":{"a":null,"b":2},"t":null}', '{"o":null,"t":["a",null]}']
