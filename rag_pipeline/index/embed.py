"""Embedders: a small Protocol with the real sentence-transformers implementation and a
deterministic hashing fake for tests (``hashing:DIM``), chosen by :func:`load_embedder`."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Protocol

import numpy as np

from rag_pipeline.device import resolve_device
from rag_pipeline.model_paths import resolve_model, weights_hash

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the index and the retriever need from an embedder."""

    model_id: str  # as the user named it (Hub id or path); recorded in manifests
    dim: int
    max_tokens: int  # content tokens per input (model max length minus special tokens)
    weights_hash: str

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character span of each content token of ``text``."""
        ...

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalized float32 embeddings, shape (len(texts), dim)."""
        ...


class SentenceTransformerEmbedder:
    """sentence-transformers model, resolved offline; fp16 and all GPUs when CUDA is present."""

    def __init__(self, model_id: str, device: str = "auto", trust_remote_code: bool = False) -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_model(model_id)
        device = str(resolve_device(device))
        self.device = device
        self.model = SentenceTransformer(str(path), device=device, trust_remote_code=trust_remote_code, local_files_only=True)
        if device == "cuda":
            self.model.half()  # fp16 on GPU: same ranking within tolerance, half the memory and time
        self.model_id = model_id
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.tokenizer = self.model.tokenizer
        n_special = len(self.tokenizer("")["input_ids"])  # [CLS] [SEP] for BERT-style models
        self.max_tokens = int(self.model.max_seq_length) - n_special
        self.weights_hash = weights_hash(path)
        self._pool = None

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        if self.device == "cuda" and torch.cuda.device_count() > 1:
            if self._pool is None:
                self._pool = self.model.start_multi_process_pool()
            emb = self.model.encode(texts, pool=self._pool, batch_size=batch_size, normalize_embeddings=True)
        else:
            # encode() sorts the inputs by length internally, so each batch pads little.
            emb = self.model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.ascontiguousarray(emb, dtype=np.float32)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic bag-of-words embedder for tests: words hashed into ``dim`` signed buckets.

    Texts sharing words get high cosine similarity, so retrieval tests are meaningful.
    Tokens are words (``\\w+``); ``max_tokens`` bounds chunks as for a real model.
    """

    def __init__(self, dim: int = 64, max_tokens: int = 64) -> None:
        self.model_id = f"hashing:{dim}"
        self.dim = dim
        self.max_tokens = max_tokens
        self.weights_hash = hashlib.sha256(f"hashing-{dim}".encode()).hexdigest()

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.lower()):
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms == 0, 1.0, norms)
        return out


def load_embedder(model_id: str, device: str = "auto", trust_remote_code: bool = False) -> Embedder:
    """``hashing:DIM`` gives the test fake; anything else is a sentence-transformers model id or path."""
    if model_id.startswith("hashing:"):
        return HashingEmbedder(int(model_id.split(":", 1)[1]))
    return SentenceTransformerEmbedder(model_id, device=device, trust_remote_code=trust_remote_code)
