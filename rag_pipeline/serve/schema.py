"""Request and response bodies of the server, in OpenAI's chat-completions schema.

The fields that change the answer are typed and bounded here, so a bad value is a 422 before
anything is queued. OpenAI fields that ask for what this server does not do (``logprobs: true``,
``tools``, penalties...) are 422s naming the field
(:meth:`ChatCompletionRequest.unsupported`); fields OpenAI clients send that change nothing here
(``user``, ``metadata``, ``logprobs: false``...) are accepted; any other field is ignored and
named in a ``Warning`` response header (:meth:`ChatCompletionRequest.unknown`). Responses are
what the official ``openai`` client parses, plus extra top-level fields it keeps in
``model_extra``: ``citations``, ``abstained`` and ``abstain_reason``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # stop sequences per request, as OpenAI allows


class ContentPart(BaseModel):
    """One part of a multi-part message; only ``text`` parts carry a question."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text: the string, or its text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content or [] if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: the last user message is the question."""

    model_config = ConfigDict(extra="allow")  # unknown fields are kept to be named in the Warning header
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # 0 or absent: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # what torch's generator takes
    n: int = Field(1, ge=1, le=1)  # one answer per request: the retrieval is shared, sampling several adds little
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None  # the answer is cut before the first of these (up to MAX_STOP)
    task: Literal["qa", "summary"] | None = None  # this server's own field: "summary" for a cited summary (None: a short answer)
    # OpenAI fields accepted only where they ask for nothing this server lacks (see unsupported()).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    modalities: list[str] | None = None
    audio: Any = None
    # OpenAI fields that change nothing here: accepted silently.
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    parallel_tool_calls: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence is empty: give non-empty strings")
        return v

    def stops(self) -> tuple[str, ...]:
        """The stop sequences, deduplicated, in the order given."""
        return tuple(dict.fromkeys([self.stop] if isinstance(self.stop, str) else self.stop or []))

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field that asks for something this server does not do; None when all can be honoured."""
        asks = [
            ("logprobs", bool(self.logprobs), "this server returns no token log-probabilities"),
            ("top_logprobs", bool(self.top_logprobs), "this server returns no token log-probabilities"),
            ("tools", bool(self.tools), "this server answers from its documents and calls no tools"),
            ("tool_choice", self.tool_choice not in (None, "none", "auto"), "this server calls no tools"),
            ("functions", bool(self.functions), "this server answers from its documents and calls no functions"),
            ("function_call", self.function_call not in (None, "none", "auto"), "this server calls no functions"),
            ("logit_bias", bool(self.logit_bias), "token biases are not applied"),
            ("presence_penalty", bool(self.presence_penalty), "repetition penalties are not applied"),
            ("frequency_penalty", bool(self.frequency_penalty), "repetition penalties are not applied"),
            ("modalities", any(m != "text" for m in self.modalities or []), "answers are text only"),
            ("audio", self.audio is not None, "answers are text only"),
        ]
        return next(((name, why) for name, asked, why in asks if asked), None)

    def unknown(self) -> list[str]:
        """The request's fields this server does not know (ignored), sorted."""
        return sorted(self.model_extra or {})


class CitationOut(BaseModel):
    """A retrieved passage the answer cites as ``[number]``."""

    number: int
    doc_id: str
    title: str
    source: str
    score: float | None
    snippet: str


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[CitationOut]
    abstained: bool
    abstain_reason: str | None
    fields: dict[str, list[int]] | None = None  # a JSON answer (response_format): leaf path -> the citations' numbers holding its value
    unsupported_fields: list[str] | None = None  # a JSON answer: leaf paths whose value no cited passage holds
    sentences: list[dict[str, Any]] | None = None  # a summary ("task": "summary"): text, cited, supported, precise per sentence
    summary_error: str | None = None  # a summary whose last sentence the token limit cut (not in ``sentences``)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion; the last one carries ``citations``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[CitationOut] | None = None
    abstained: bool | None = None
    abstain_reason: str | None = None
    fields: dict[str, list[int]] | None = None
    unsupported_fields: list[str] | None = None
    sentences: list[dict[str, Any]] | None = None
    summary_error: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rag-pipeline"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(BaseModel):
    """``POST /v1/search``: retrieval only."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=50)
    hybrid: bool | None = None  # None: as the server answers (serve --hybrid, the default, or --no-hybrid)


class SearchHit(BaseModel):
    rank: int
    score: float
    chunk_id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    query: str
    hits: list[SearchHit]


class Health(BaseModel):
    status: Literal["loading", "ok", "failed"]
    model: str
    detail: str = ""
    queue: dict[str, int] = Field(default_factory=dict)  # pending, max
    batches: dict[str, Any] = Field(default_factory=dict)  # count, requests, largest


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: the ``openai`` client raises its ``APIStatusError`` subclasses from it."""

    error: ErrorDetail
