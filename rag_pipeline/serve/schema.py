"""Request and response bodies of the server, in OpenAI's chat-completions schema.

Requests ignore fields they do not know (OpenAI clients send ``user``, ``logprobs: false`` and
the like); the fields that change the answer are typed and bounded here, so a bad value is a
422 before anything is queued. Responses are what the official ``openai`` client parses, plus
extra top-level fields it keeps in ``model_extra``: ``citations``, ``abstained`` and
``abstain_reason``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # 0 or absent: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)  # one answer per request: the retrieval is shared, sampling several adds little
    stream: bool = False
    stream_options: StreamOptions | None = None


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
