"""Structured answers: schemas checked, response_format read, JSON parsed, values traced to passages, decoding under a schema."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag_pipeline.answer import structured  # noqa: E402
from rag_pipeline.errors import InputError  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {"person": {"type": ["string", "null"]}, "year": {"type": ["integer", "null"]},
                   "place": {"type": ["string", "null"]}, "events": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    "required": ["person", "year", "place", "events"],
    "additionalProperties": False,
}


def test_a_schema_is_checked_with_a_message_that_names_the_problem(tmp_path) -> None:
    assert structured.check_schema(PERSON, "x") is PERSON
    with pytest.raises(InputError, match="not a valid JSON schema at properties/year"):
        structured.check_schema({"type": "object", "properties": {"year": {"type": "integr"}}}, "x")
    with pytest.raises(InputError, match="the schema's type is 'array'"):
        structured.check_schema({"type": "array"}, "x")
    with pytest.raises(InputError, match="a JSON schema is a JSON object, got list"):
        structured.check_schema([], "x")
    deep: dict = {"type": "string"}
    for _ in range(400):  # well inside a request's size limit; checking it recursed past Python's stack (a 500 in serve)
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InputError, match="the schema nests 801 levels deep, more than the 32"):
        structured.check_schema(deep, "x")
    wordy = {"type": "object", "properties": {"a": {"type": "string", "description": "word " * 1000}}}
    with pytest.raises(InputError, match="the schema is 5,0.. characters of compact JSON, more than the 4,000 a prompt shows"):
        structured.check_schema(wordy, "x")
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="is not JSON"):
        structured.load_schema(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        structured.load_schema(str(tmp_path / "missing.json"))
    good = tmp_path / "p.json"
    good.write_text(json.dumps(PERSON))
    assert structured.load_schema(str(good)) == PERSON
    assert structured.load_schema("object") == structured.JSON_OBJECT


def test_response_format_as_openai_sends_it() -> None:
    assert structured.schema_of_response_format(None) is None
    assert structured.schema_of_response_format({"type": "text"}) is None
    assert structured.schema_of_response_format({"type": "json_object"}) == {"type": "object"}
    rf = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    assert structured.schema_of_response_format(rf) == PERSON
    with pytest.raises(InputError, match="unknown"):
        structured.schema_of_response_format({"type": "yaml"})
    with pytest.raises(InputError, match="needs"):
        structured.schema_of_response_format({"type": "json_schema", "schema": PERSON})
    with pytest.raises(InputError, match="response_format.json_schema.schema: not a valid JSON schema"):
        structured.schema_of_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}})


def test_canonical_keeps_the_order_of_the_fields() -> None:
    text = structured.canonical(PERSON)
    assert json.loads(text) == PERSON and " " not in text.replace("null", "")
    assert text.index('"person"') < text.index('"year"') < text.index('"place"') < text.index('"events"')  # as given, not sorted


def test_parse_says_why_an_answer_is_not_valid() -> None:
    ok = '{"person": "Napoleon", "year": 1815, "place": null, "events": []}'
    assert structured.parse(ok, PERSON) == (json.loads(ok), None)
    obj, why = structured.parse('{"person": "Napoleon", "ye', PERSON)
    assert obj is None and why.startswith("not JSON") and "token limit" in why
    obj, why = structured.parse('{"person": "Napoleon", "year": "1815", "place": null, "events": []}', PERSON)
    assert obj is None and "does not follow the schema" in why and "'1815'" in why


def test_values_are_traced_to_the_passages_that_hold_them() -> None:
    passages = ["Napoleon was defeated at Waterloo in 1815.", "The battle of Waterloo ended the Hundred Days."]
    obj = {"person": "Napoleon", "year": 1815, "place": "Waterloo", "events": ["the Hundred Days", "a coronation"],
           "flag": True, "none": None, "nested": {"who": "napoleon"}}
    fields, unsupported = structured.field_citations(obj, passages)
    assert fields == {"person": [1], "year": [1], "place": [1, 2], "events[0]": [2], "nested.who": [1]}
    assert unsupported == ["events[1]"]
    assert list(structured.leaves({"a": [{"b": "x"}, None, False, ""]})) == [("a[0].b", "x")]


def test_the_instruction_holds_the_request_and_the_schema() -> None:
    text = structured.instruction("  Who lost at Waterloo?  ", PERSON)
    assert text.startswith("Who lost at Waterloo?\n\nAnswer with one JSON object that follows this JSON schema: {")
    assert structured.canonical(PERSON) in text and "null" in text
    assert "schema" not in structured.instruction("Facts?", structured.JSON_OBJECT)


# ------------------------------------------------------------------ decoding under the schema (tiny model, real library)

BOUNDED = {  # every answer under it is short, so even a random model finishes it within the token limit
    "type": "object",
    "properties": {"colour": {"enum": ["red", "blue", "green"]}, "count": {"type": "integer", "minimum": 0, "maximum": 9},
                   "name": {"type": ["string", "null"], "maxLength": 6}, "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
    "required": ["colour", "count", "name", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    try:
        from tests.tiny_models import build_tiny_llama, build_tiny_tokenizer
    except ImportError:
        from tiny_models import build_tiny_llama, build_tiny_tokenizer  # type: ignore[no-redef]
    tok = build_tiny_tokenizer(chat=True)
    return AutoModelForCausalLM.from_pretrained(str(build_tiny_llama(tmp_path_factory.mktemp("llama")))), tok


def test_every_sampled_answer_parses_and_follows_the_schema(tiny) -> None:
    import jsonschema

    from rag_pipeline import generator

    model, tok = tiny
    text = structured.canonical(BOUNDED)
    prompts = ["Describe the fox.", "What colour is the sky?", "Count the owls."] * 4
    outs = generator.generate_answers(model, tok, "causal", prompts, max_new_tokens=80, batch_size=4, do_sample=True,
                                      temperature=1.5, top_p=1.0, seed=3,
                                      constraints=[structured.json_constraint(tok, text) for _ in prompts])
    objs = [json.loads(o) for o in outs]  # every one parses ...
    for obj in objs:
        jsonschema.validate(obj, BOUNDED)  # ... and follows the schema
    assert len({json.dumps(o, sort_keys=True) for o in objs}) > 3  # sampling explored the schema, not one forced string


def test_the_constraint_is_incremental_and_allows_eos_only_at_the_end(tiny) -> None:
    _, tok = tiny
    text = structured.canonical(BOUNDED)
    answer = '{"colour":"red","count":3,"name":null,"tags":[true]}'
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    c = structured.json_constraint(tok, text)
    for i, t in enumerate(ids):
        allowed = c.allowed(ids[:i])
        assert t in allowed and tok.eos_token_id not in allowed
        assert c.allowed(ids[:i]) == allowed  # asked again: the same
    assert c.allowed(ids) == [tok.eos_token_id]  # complete: EOS alone
    assert c.allowed(ids + [tok.eos_token_id, tok.eos_token_id]) == [tok.eos_token_id]  # a finished row, padded
    assert c.allowed(ids[:3]) == structured.json_constraint(tok, text).allowed(ids[:3])  # rolled back to a shorter prefix
    bad = tok('{"colour":"pink"', add_special_tokens=False)["input_ids"]
    fresh = structured.json_constraint(tok, text)
    assert not all(t in fresh.allowed(bad[:i]) for i, t in enumerate(bad))  # a value outside the enum is never allowed


def test_json_close_reads_strings_escapes_and_brackets() -> None:
    assert structured.json_close('{"a":["x","y') == (True, '"]}')
    assert structured.json_close('{"a":"b}]","c":{"d":[1') == (False, "]}}")  # brackets inside a string are text
    assert structured.json_close('{"a":"x\\') == (True, '""}')  # after a backslash the first quote is escaped
    assert structured.json_close('{"a":"x\\\\') == (True, '"}')  # an escaped backslash escapes nothing
    assert structured.json_close('{"a":1}') == (False, "")
    # the probes' cache key: string values emptied, keys kept (two arrays under different keys differ)
    assert structured._scan('{"a":"xy","b":[1,"q')[3] == '{"a":"","b":[1,"'
    assert structured._scan('{"a":[')[3] != structured._scan('{"b":[')[3]
    assert structured._scan('{"pe')[3] == '{"pe' and structured._scan('["k","v')[3] == '["","'  # a key in progress is kept


@pytest.mark.parametrize("schema", [PERSON, structured.JSON_OBJECT, NESTED := {
    "type": "object", "required": ["people"],
    "properties": {"people": {"type": "array", "items": {"type": "object", "required": ["name", "age", "role"], "properties": {
        "name": {"type": "string", "minLength": 3}, "age": {"type": "number"}, "role": {"enum": ["chief", "clerk"]}}}}}}],
    ids=["person", "object", "nested"])
def test_an_answer_cut_by_its_budget_is_closed_into_a_valid_object(tiny, schema) -> None:
    """Free strings under a random model at a high temperature run into the token limit: with the budget the close
    is forced in time, so every answer parses, follows the schema and fits; without it, answers are cut. A new array
    item of three required fields (nested) lengthens the close by more than the slack: such a token is refused
    where its close would not fit (seeds and budgets where it once overran)."""
    import jsonschema

    from rag_pipeline import batching, generator

    model, tok = tiny
    text = structured.canonical(schema)
    prompts = ["Describe the fox.", "What colour is the sky?", "Count the owls.", "Where is the owl?"] * 3
    kw = dict(batch_size=4, do_sample=True, temperature=2.0, top_p=1.0)
    free = generator.generate_answers(model, tok, "causal", prompts, constraints=[structured.json_constraint(tok, text) for _ in prompts],
                                      max_new_tokens=100, seed=5, **kw)
    assert sum(structured.parse(o, schema)[1] is not None for o in free) >= 3  # no budget: the limit cuts answers
    for budget, seed in ((100, 5), (60, 5), (60, 4), (100, 12)):
        constraints = [structured.json_constraint(tok, text, budget) for _ in prompts]
        counts = [generator.DecodeCounts() for _ in prompts]
        outs = generator.generate_answers(model, tok, "causal", prompts, constraints=constraints, counts=counts, max_new_tokens=budget,
                                          seed=seed, **kw)
        for out, count in zip(outs, counts):
            jsonschema.validate(json.loads(out), schema)
            assert count.completion_tokens <= budget
        assert sum(c.cut for c in constraints) >= 3  # closed by force, and said so
    engine = batching.DecodeEngine(model, max_rows=4).start()
    try:
        greedy = [structured.json_constraint(tok, text, 60) for _ in prompts[:4]]
        on_engine = generator.generate_answers(model, tok, "causal", prompts[:4], max_new_tokens=60, constraints=greedy, engine=engine)
    finally:
        engine.stop()
    for out in on_engine:
        jsonschema.validate(json.loads(out), schema)
    assert any(c.cut for c in greedy)


def test_a_schema_whose_shortest_answer_exceeds_the_budget_is_refused_and_a_long_close_is_still_forced(tiny) -> None:
    """Fourteen required strings: the empty answer's close is longer than the usual search (64 tokens), so the search
    grows with it, and a budget below the shortest answer is a one-line error before decoding."""
    import jsonschema

    from rag_pipeline import generator

    model, tok = tiny
    many = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(14)},
            "required": [f"field_{i}" for i in range(14)]}
    text = structured.canonical(many)
    shortest = len(structured.json_constraint(tok, text, 10_000).completion())
    assert shortest > structured.CLOSE_STEPS
    with pytest.raises(InputError, match=f"shortest JSON answer under this schema takes {shortest} tokens, over the limit of 50"):
        structured.json_constraint(tok, text, 50)
    budget = shortest + 40
    constraints = [structured.json_constraint(tok, text, budget) for _ in range(4)]
    outs = generator.generate_answers(model, tok, "causal", ["Describe the fox.", "Count the owls."] * 2, max_new_tokens=budget,
                                      batch_size=4, do_sample=True, temperature=2.0, top_p=1.0, seed=1, constraints=constraints)
    for out in outs:
        jsonschema.validate(json.loads(out), many)


def test_a_schema_the_decoder_cannot_enforce_is_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="constrained decoding cannot enforce"):
        structured.check_schema({"type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}}, "x")


NULLABLE = {"type": "object", "properties": {"answer": {"type": ["string", "null"], "maxLength": 8},
                                             "quote": {"type": ["string", "null"], "maxLength": 8}},
            "required": ["answer", "quote"], "additionalProperties": False}


def test_the_null_object_is_the_abstention_of_a_schema_whose_fields_all_allow_null(tiny) -> None:
    _, tok = tiny
    assert structured.null_object(NULLABLE) == '{"answer":null,"quote":null}'
    assert structured.null_object(BOUNDED) is None  # its colour cannot be null: no answer under it abstains
    assert structured.is_null('{"answer":null,"quote":null}') and not structured.is_null('{"answer":"x","quote":null}')
    assert not structured.is_null('{"answer":') and not structured.is_null("[null]")
    ids = tok('{"answer":null,"quote":null}', add_special_tokens=False)["input_ids"]
    opening = structured.null_opening(tok, ids)
    text = tok.decode(opening)
    assert ids[: len(opening)] == opening and text.startswith('{"answer":') and text.endswith("n") and "quote" not in text


def test_json_margins_score_the_null_object_against_the_best_answer_that_is_not_null(tiny) -> None:
    """The null margin of a JSON answer: the abstention is the null object (nothing banned up front), a best answer
    that is still the null object is decoded again with its first null banned, and the engine decodes the same."""
    import functools

    import jsonschema
    import torch

    from rag_pipeline import batching, generator

    model, tok = tiny
    text = structured.canonical(NULLABLE)
    null = structured.null_object(NULLABLE)
    prompts = ["Describe the fox.", "What colour is the sky?", "Count the owls.", "Where is the owl?"]
    kw = dict(max_new_tokens=40, is_refusal=structured.is_null, openings=False, opening=functools.partial(structured.null_opening, tok))

    def constraints() -> list:
        return [structured.json_constraint(tok, text) for _ in prompts]

    got = generator.generate_with_margins(model, tok, "causal", prompts, null, constraints=constraints(), batch_size=2, **kw)
    engine = batching.DecodeEngine(model, max_rows=2).start()
    try:
        on_engine = generator.generate_with_margins(model, tok, "causal", prompts, null, constraints=constraints(), engine=engine, **kw)
    finally:
        engine.stop()
    assert [a for a, _ in on_engine] == [a for a, _ in got]
    assert [m for _, m in on_engine] == pytest.approx([m for _, m in got], abs=1e-3)
    ab = tok(null, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for prompt, (answer, margin) in zip(prompts, got):
        jsonschema.validate(json.loads(answer), NULLABLE)
        assert not structured.is_null(answer)
        ids = generator.encode_prompt(tok, "causal", prompt)
        ans = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():  # log P(null object) - log P(answer), from one forward pass each
            lps = [float(model(input_ids=torch.tensor([ids + seq])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
                         .gather(-1, torch.tensor(seq)[:, None]).sum()) for seq in (ab, ans)]
        assert margin == pytest.approx(lps[0] - lps[1], abs=1e-3)  # these answers encode back to the tokens decoded


def test_a_json_answer_that_is_the_null_object_is_reported_as_the_models_abstention() -> None:
    """The null object is a JSON answer's abstention: shown as decoded, but abstained (reason "generator"), as calibrate counts it."""
    from types import SimpleNamespace

    from rag_pipeline.answer.ask import AskConfig, Pipeline

    me = SimpleNamespace(cfg=AskConfig())
    doc = {"id": "c0", "doc_id": "d0", "title": "Owls", "source": "owls.txt", "score": 1.0, "text": "Owls hunt at night."}
    null = Pipeline._finish_json(me, "When do owls hunt?", '{"answer":null,"quote":null}', [doc], {}, NULLABLE)
    said = Pipeline._finish_json(me, "When do owls hunt?", '{"answer":"at night","quote":null}', [doc], {}, NULLABLE)
    cut = Pipeline._finish_json(me, "When do owls hunt?", '{"answer":nu', [doc], {}, NULLABLE)
    assert (null.abstained, null.abstain_reason, null.data) == (True, "generator", {"answer": None, "quote": None})
    assert (said.abstained, said.abstain_reason, said.fields) == (False, None, {"answer": [1]})
    assert not cut.abstained and cut.json_error
