"""Structured answers: one JSON object that follows a JSON schema, decoded under it, its values traced to passages.

``ask --task extract --schema FILE`` and ``serve``'s OpenAI ``response_format`` (``json_object``, ``json_schema``)
answer with a JSON object instead of a sentence. The schema is checked first (:func:`check_schema`:
a one-line error naming what is wrong), the request is told the schema in its prompt
(:func:`instruction`), and decoding runs under a token mask compiled from the schema by
llguidance (:func:`json_constraint`), so every answer parses and validates: near the token limit
a close the grammar allows is forced (:class:`GrammarConstraint`'s ``budget``), so a cut answer is
a valid object whose last value is short. llguidance was chosen by measurement among
xgrammar, llguidance, outlines-core and lm-format-enforcer on SmolLM2's tokenizer (docs/answering.md):
xgrammar and llguidance gave identical answers and masks in well under 1 ms a token (the model's
step is about 70 ms); llguidance installs with no dependency, xgrammar's metadata pulls triton.
The JSON is compact (no free whitespace): a small model given free whitespace pretty-prints into
its token limit.

The object's values are traced back to the shown passages (:func:`field_citations`): each string or
number leaf maps to the numbers of the passages that hold it (whole words), the
structured form of ``[n]``; a leaf no passage holds is listed in ``unsupported``. ``null`` is the
structured form of abstention: the prompt asks for it where the documents do not say.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag_pipeline.answer.grounded import token_pieces
from rag_pipeline.errors import InputError
from rag_pipeline.textnorm import contains_answer

JSON_OBJECT: dict[str, Any] = {"type": "object"}  # OpenAI's json_object mode: any JSON object


def canonical(schema: dict[str, Any]) -> str:
    """The schema as compact JSON, its keys in the order given (a JSON answer's fields follow the order of its properties): what a decoding setting holds."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


MAX_SCHEMA_DEPTH = 32  # objects and arrays inside one another, the schema's keywords counted
# The prompt shows the schema beside the passages, outside their token budget: a longer one (descriptions of a
# whole page) would make one prompt tens of thousands of tokens, read in one pass that holds up every other request.
MAX_SCHEMA_CHARS = 4000


def _nesting(value: Any) -> int:
    """How deep JSON ``value``'s objects and arrays nest (1 for a flat object), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """``schema`` when it is a JSON schema for an object, else :class:`InputError` naming ``where`` and the fix."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InputError(f"{where}: a JSON schema is a JSON object, got {type(schema).__name__}; e.g. "
                         '{"type": "object", "properties": {"name": {"type": "string"}}}')
    depth = _nesting(schema)
    if depth > MAX_SCHEMA_DEPTH:  # the checks below recurse: a deeper schema would exhaust Python's stack
        raise InputError(f"{where}: the schema nests {depth} levels deep, more than the {MAX_SCHEMA_DEPTH} an answer's "
                         "schema may: flatten it")
    size = len(canonical(schema))
    if size > MAX_SCHEMA_CHARS:
        raise InputError(f"{where}: the schema is {size:,} characters of compact JSON, more than the {MAX_SCHEMA_CHARS:,} a prompt "
                         "shows: shorten its descriptions, or ask for fewer fields")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.path) or "(top level)"
        raise InputError(f"{where}: not a valid JSON schema at {path}: {e.message}") from None
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        raise InputError(f"{where}: the schema's type is {kind!r}; an answer is a JSON object, use \"type\": \"object\" "
                         "with the fields as properties")
    error = _grammar(canonical(schema))[1]
    if error:
        raise InputError(f"{where}: constrained decoding cannot enforce this schema ({error}); simplify it")
    return schema


def load_schema(path: str) -> dict[str, Any]:
    """The JSON schema in file ``path`` (``object``: any JSON object; text starting with ``{``: the schema itself), checked."""
    if path == "object":
        return JSON_OBJECT
    if path.lstrip().startswith("{"):
        try:
            return check_schema(json.loads(path), "the schema")
        except json.JSONDecodeError as e:
            raise InputError(f"the schema given inline is not JSON ({e}): write it as a JSON object or pass a file") from None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"schema file {path} does not exist: pass a JSON schema file, or --schema object for any JSON object")
    try:
        schema = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"schema file {path} is not JSON ({e}): write the schema as a JSON object") from None
    return check_schema(schema, f"schema file {path}")


def schema_of_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema an OpenAI ``response_format`` asks for: None for text, :data:`JSON_OBJECT` for
    ``json_object``, the checked ``json_schema.schema`` for ``json_schema``. :class:`InputError` otherwise."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise InputError(f"response_format type {kind!r} is unknown: use 'text', 'json_object' or 'json_schema'")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise InputError("response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    return check_schema(spec["schema"], "response_format.json_schema.schema")


def instruction(question: str, schema: dict[str, Any]) -> str:
    """The request as the prompt's question: what was asked, then the schema the answer must follow."""
    shape = "one JSON object" if schema == JSON_OBJECT else f"one JSON object that follows this JSON schema: {canonical(schema)}"
    return (f"{question.strip()}\n\nAnswer with {shape}. Copy each value from the documents; "
            "use null where the documents do not say.")


def parse(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """(the object, None) when ``text`` is JSON that validates against ``schema``; (None, why) otherwise."""
    import jsonschema

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at character {e.pos}): the answer was probably cut by the token limit"
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    return (obj, None) if error is None else (None, f"does not follow the schema: {error.message}")


def null_object(schema: dict[str, Any]) -> str | None:
    """The abstention of a JSON answer under ``schema``: its object with every property null, compact as the JSON
    decoder and the training targets write it (``{"answer":null,"quote":null}``); None when that object does not
    follow the schema (a property that cannot be null), so that no answer under it can abstain."""
    import jsonschema

    obj = {k: None for k in (schema.get("properties") or {})}
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    return json.dumps(obj, separators=(",", ":")) if validator.is_valid(obj) else None


def is_null(text: str) -> bool:
    """Whether a JSON answer is the abstention: an object whose every property is null (:func:`null_object`)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and all(v is None for v in obj.values())


def null_opening(tokenizer: Any, ids: list[int]) -> list[int]:
    """The tokens of a JSON answer up to the one that opens its first null value (``{"answer":n``): banned, they
    make the next decode write that property's value (the null margin's best answer that does not abstain)."""
    for j in range(len(ids)):
        if re.search(r":\s*n", tokenizer.decode(ids[: j + 1])):
            return list(ids[: j + 1])
    return list(ids[:2])


def leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) for every non-null scalar of ``obj``: ``name``, ``events[0]``, ``author.name``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{path}[{i}]")
    elif obj is not None and not isinstance(obj, bool) and str(obj).strip():
        yield path, obj


def field_citations(obj: Any, passages: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """({leaf path: numbers of the passages holding its value}, [paths of values no passage holds]).

    A value is held when its words occur contiguously in the passage (:func:`~rag_pipeline.textnorm.contains_answer`);
    booleans are not traced (no passage spells them).
    """
    cited: dict[str, list[int]] = {}
    unsupported: list[str] = []
    for path, value in leaves(obj):
        numbers = [n for n, text in enumerate(passages, 1) if contains_answer(text, [str(value)])]
        if numbers:
            cited[path] = numbers
        else:
            unsupported.append(path)
    return cited, unsupported


# ---------------------------------------------------------------------------------- decoding


@functools.lru_cache(maxsize=128)
def _grammar(schema_text: str) -> tuple[str, str]:
    """(llguidance grammar, error or "") of a canonical schema: compact JSON, no free whitespace."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text, overrides={"whitespace_flexible": False})
    except ValueError as e:
        return "", str(e)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    return grammar, "" if error.startswith("WARNING") else error


def _tokenizer_info(tokenizer: Any) -> Any:
    """llguidance's view of ``tokenizer`` (built once per tokenizer object: about 0.3 s for SmolLM2's)."""
    cached = getattr(tokenizer, "_rag_llguidance", None)
    if cached is None:
        import llguidance.hf

        cached = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=tokenizer.eos_token_id)
        tokenizer._rag_llguidance = cached
    return cached


@functools.lru_cache(maxsize=128)
def lark_grammar(text: str) -> str:
    """The llguidance grammar of a Lark grammar (:mod:`rag_pipeline.answer.summary`'s); ValueError when it is not one."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(text)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise ValueError(f"not a valid grammar: {error}")
    return grammar


CLOSE_STEPS = 64  # the most tokens a forced close of a JSON answer may take, or twice its first close if more
CLOSE_SLACK = 8  # tokens kept in hand before the close is forced: one free token may open this many more to close
_CLOSE_VALUES = (",", ":", "null", '""', "0", "false", "[]", "{}", '"')  # what a close writes where the grammar wants more


def _scan(text: str) -> tuple[bool, bool, list[str], str]:
    """(inside a string, right after a backslash in it, the closers of the open objects and arrays, the skeleton) of
    the start of a compact JSON answer. The skeleton is ``text`` with every string value emptied and keys kept
    (``{"a":"xy","b":[1,"q`` -> ``{"a":"","b":[1,"``): the structure, which a long string value does not change."""
    in_string = escaped = is_key = False
    stack: list[str] = []
    out: list[str] = []
    last = ""  # the last character outside strings
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            if is_key or not in_string:  # a key's characters; of a value, its closing quote only
                out.append(ch)
            continue
        if ch == '"':
            in_string, is_key = True, bool(stack) and stack[-1] == "}" and last in ("{", ",")
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
        last = ch
        out.append(ch)
    return in_string, escaped, stack, "".join(out)


def json_close(text: str) -> tuple[bool, str]:
    """(inside a string, the text that closes it and every open object and array) of the start of a compact JSON
    answer: ``'{"a":["x","y'`` -> ``(True, '"]}')``. Lexical only (strings, escapes, brackets): what the grammar
    still requires (a property, a number's digits) is the matcher's to say (:meth:`GrammarConstraint.completion`)."""
    in_string, escaped, stack, _ = _scan(text)
    quote = ('""' if escaped else '"') if in_string else ""  # after a backslash the first quote is the escaped one
    return in_string, quote + "".join(reversed(stack))


def _structural(tokenizer: Any, in_string: bool) -> Any:
    """Ids of the tokens that can open more JSON structure: outside a string, those holding ``,`` ``[`` or ``{``;
    inside one, those holding a quote followed by one of them (``","``, ``"},{"``). Found once per tokenizer."""
    import numpy as np

    cached = getattr(tokenizer, "_rag_json_structural", None)
    if cached is None:
        pieces = token_pieces(tokenizer)
        opens = re.compile(r"[,\[{]")
        cached = {False: np.array([i for i, t in enumerate(pieces) if opens.search(t)], dtype=np.int64),
                  True: np.array([i for i, t in enumerate(pieces) if '"' in t and opens.search(t, t.index('"'))], dtype=np.int64)}
        tokenizer._rag_json_structural = cached
    return cached[in_string]


class GrammarConstraint:
    """The tokens allowed for one answer under an llguidance grammar: :meth:`allowed`, the interface
    of :class:`~rag_pipeline.answer.grounded.GroundedConstraint` (``generate``'s ``prefix_allowed_tokens_fn``).

    End-of-sequence is allowed only once the grammar is complete, and then alone. The matcher is
    incremental: each call consumes the tokens added since the last one (rolling back any that
    changed), so a step costs one mask, not a replay.

    With a ``budget`` (a JSON answer's token limit) the answer is finished within it: once the
    tokens left are within :data:`CLOSE_SLACK` of a short close (:meth:`completion`, found
    greedily: the open string, objects and arrays closed, values still required written as null,
    "", 0...), that close is the only continuation; before that, a structural token after which
    the close would no longer fit (a new array item of many required fields) is refused
    (:meth:`_guarded`). A cut answer is then a valid one whose last value is short, where without
    it the token limit leaves text that does not parse. A budget below the schema's shortest
    answer is an :class:`InputError`.

    Args:
        tokenizer: the generator's (fast) tokenizer.
        grammar: an llguidance grammar (:func:`_grammar`, :func:`lark_grammar`).
        budget: the answer's token limit (``max_new_tokens``), for JSON answers; None: no forced close.
    """

    def __init__(self, tokenizer: Any, grammar: str, budget: int | None = None) -> None:
        import llguidance
        import numpy as np

        self.matcher = llguidance.LLMatcher(_tokenizer_info(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise InputError(f"constrained decoding cannot enforce this grammar ({self.matcher.get_error()}); simplify it")
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.n_vocab = len(tokenizer)
        self.budget = budget
        self._mask = np.full((1, (self.n_vocab + 31) // 32), -1, dtype=np.int32)
        self._seen: list[int] = []
        self._allowed: Any = None  # the boolean mask after ``_seen``
        self._close: tuple[list[int], list[int] | None] | None = None  # (``_seen``, its completion) once computed
        self._forced_at: int | None = None  # the length of ``_seen`` where the forced close began
        self._probes: dict[tuple[bool, str], dict[int, int]] = {}  # (in a string, skeleton) -> {token: its close's length}
        # the longest close searched for: CLOSE_STEPS, or twice the empty answer's close (a schema requiring many fields)
        self._steps = 1024
        first = self.completion() if budget is not None else None
        self._steps = max(CLOSE_STEPS, 2 * len(first)) if first is not None else CLOSE_STEPS
        if budget is not None and first is not None and len(first) > budget:
            raise InputError(f"the shortest JSON answer under this schema takes {len(first)} tokens, over the limit of {budget}: "
                             "raise --max-json-tokens (serve: max_tokens) or make fewer fields required")

    @property
    def cut(self) -> bool:
        """Whether the answer last decoded was closed by force near the budget (its last value is cut short)."""
        return self._forced_at is not None

    def allowed(self, generated: list[int] | tuple[int, ...]) -> list[int]:
        """Token ids allowed after ``generated`` (the answer's ids so far); EOS alone once the answer is complete."""
        import numpy as np

        return np.flatnonzero(self.allowed_mask(generated)).tolist()

    def allowed_mask(self, generated: list[int] | tuple[int, ...]) -> Any:
        """:meth:`allowed` as a boolean numpy array over the vocabulary (the grammar's bitmask, unpacked)."""
        import llguidance.numpy
        import numpy as np

        generated = list(generated)
        same = 0
        while same < min(len(generated), len(self._seen)) and generated[same] == self._seen[same]:
            same += 1
        if same < len(self._seen):
            self.matcher.rollback(len(self._seen) - same)
            del self._seen[same:]
            self._allowed = None
        if self._forced_at is not None and same < self._forced_at:
            self._forced_at = None  # a decode again from before the close (the next answer, or a guess rolled back)
        for t in generated[same:]:
            if t == self.eos_id or self.matcher.is_stopped():
                return self._only_eos()  # finished (generate pads a finished row with EOS)
            if not self.matcher.consume_token(t):
                raise RuntimeError(f"token {t} broke the grammar after {len(self._seen)} tokens: {self.matcher.get_error()}")
            self._seen.append(t)
            self._allowed = None
        if self._allowed is None:
            if self.matcher.is_stopped():
                self._allowed = self._only_eos()
            elif (forced := self._forced()) is not None:
                self._allowed = forced
            else:
                llguidance.numpy.fill_next_token_bitmask(self.matcher, self._mask)
                bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self.n_vocab].astype(bool)
                self._allowed = self._guarded(bits) if bits.any() else self._only_eos()
        return self._allowed

    def _only_eos(self) -> Any:
        return self._only(self.eos_id)

    def _only(self, token: int) -> Any:
        import numpy as np

        mask = np.zeros(self.n_vocab, dtype=bool)
        mask[token] = True
        return mask

    def _forced(self) -> Any:
        """The mask of the forced close's next token (EOS once complete) when the budget says close now; else None."""
        if self.budget is None or self.budget - len(self._seen) > self._steps + CLOSE_SLACK:
            return None
        if self._close is None or self._close[0] != self._seen:
            self._close = (list(self._seen), self.completion())
        close = self._close[1]
        if close is None or len(close) + CLOSE_SLACK < self.budget - len(self._seen):
            return None
        if close and self._forced_at is None:
            self._forced_at = len(self._seen)
        return self._only(close[0]) if close else self._only_eos()

    def _guarded(self, bits: Any) -> Any:
        """``bits`` less the structural tokens (a separator, an opening bracket: :func:`_structural`) after which the
        close would no longer fit in the tokens left: a ``,`` that starts one more array item of many required fields
        can lengthen the close by more than :data:`CLOSE_SLACK`. Each such token's close is found once per structure
        (:func:`_scan`'s skeleton: the text with its string values emptied, keys kept), so a long string costs one
        round of probes."""
        left = self.budget - len(self._seen) if self.budget is not None else None
        close = self._close[1] if self._close is not None and self._close[0] == self._seen else None
        if left is None or close is None or left - len(close) > self._steps:
            return bits
        in_string, _, _, skeleton = _scan(self.tokenizer.decode(self._seen))
        candidates = [int(t) for t in _structural(self.tokenizer, in_string) if bits[t]]
        known = self._probes.setdefault((in_string, skeleton), {})
        for t in candidates:
            if t not in known:
                after = self.completion([t])
                known[t] = self._steps + 1 if after is None else len(after)
        banned = [t for t in candidates if known[t] > left - 2]
        if not banned:
            return bits
        bits = bits.copy()
        bits[banned] = False
        return bits if bits.any() else self._only(close[0]) if close else self._only_eos()

    def completion(self, after: list[int] | None = None) -> list[int] | None:
        """The tokens that complete the answer from the matcher's state (after the tokens ``after``, when given), or
        None when none is found within ``_steps`` tokens (or ``after`` breaks the grammar); the matcher is
        left as it was. Each step takes the tokens the grammar forces (a property's name), else the first the grammar
        accepts whole of: the lexical close of :func:`json_close` (or its start), a separator, a value (null, "", 0,
        false, [], {}), a quote; else the grammar's first allowed token. A short close, found greedily: not always
        the shortest."""
        taken: list[int] = []  # consumed here: ``after``, then the close
        try:
            for t in after or []:
                if self.matcher.validate_tokens([t]) != 1 or not self.matcher.consume_token(t):
                    return None
                taken.append(t)
            start = len(taken)
            while not self.matcher.is_accepting():
                forced = self.matcher.compute_ff_tokens()
                step = forced[: self.matcher.validate_tokens(forced)] if forced else []
                if not step:
                    step = self._close_step(taken)
                    step = step[: self.matcher.validate_tokens(step)] if step else []
                if not step or len(taken) - start + len(step) > self._steps:
                    return None
                for t in step:
                    if not self.matcher.consume_token(t):
                        return None
                    taken.append(t)
            return taken[start:]
        finally:
            if taken:
                self.matcher.rollback(len(taken))

    def _close_step(self, taken: list[int]) -> list[int]:
        import llguidance.numpy
        import numpy as np

        in_string, close = json_close(self.tokenizer.decode(self._seen + taken))
        options = [close[:k] for k in range(len(close), 0, -1)] + ([] if in_string else list(_CLOSE_VALUES))
        for option in options:
            ids = self.tokenizer.encode(option, add_special_tokens=False)
            if ids and self.matcher.validate_tokens(ids) == len(ids):
                return ids
        mask = np.zeros_like(self._mask)
        llguidance.numpy.fill_next_token_bitmask(self.matcher, mask)
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[: self.n_vocab])
        return [int(t) for t in allowed[:1] if t != self.eos_id]


def json_constraint(tokenizer: Any, schema_text: str, budget: int | None = None) -> GrammarConstraint:
    """The token constraint of a JSON answer under the schema ``schema_text`` (:func:`canonical`); with ``budget`` (the
    answer's token limit) the object is closed within it (:class:`GrammarConstraint`)."""
    grammar, error = _grammar(schema_text)
    if error:
        raise InputError(f"constrained decoding cannot enforce this JSON schema ({error}); simplify it")
    return GrammarConstraint(tokenizer, grammar, budget)
