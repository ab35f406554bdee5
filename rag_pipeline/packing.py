"""Training examples that show the same passages, read once (``train-generator --pack-shared``).

A RAFT training example is nearly all prompt: on the bundled data ~1,700 of its ~1,830 characters
are the passages, and the loss falls on the ~10 tokens of its answer. When several examples show
the same passages in the same order (``build-raft-dataset --share-context N``), their token
sequences agree up to the question. :func:`pack` writes one such shared prefix followed by each
example's rest (question, answer) as one sequence, and :func:`collate` gives every rest a block of
the attention mask that sees the prefix and itself only, with position ids that continue the
prefix's. Each example's logits, loss and gradient are then those it gets alone (up to float
rounding; ``tests/test_packing.py`` compares them with unpacked batches), for a fraction of the
tokens.

A unit is a dict like an encoded example (``input_ids``, ``labels``) with ``segments``: the
prefix's length, then each rest's, and ``n_examples``. An example that shares nothing is a unit
with a prefix of length 0 and one rest.
"""

from __future__ import annotations

from typing import Any, Hashable

from rag_pipeline.generator import pad

MAX_EXAMPLES = 16  # examples per unit: the sequence, and the mask's square, stay small
MIN_PREFIX = 32  # tokens a prefix must share for packing to be worth a unit's bookkeeping


def common_prefix(rows: list[list[int]]) -> int:
    """The number of leading tokens all ``rows`` share."""
    n = min(len(r) for r in rows)
    for i in range(n):
        t = rows[0][i]
        if any(r[i] != t for r in rows[1:]):
            return i
    return n


def first_label(example: dict[str, Any]) -> int:
    """The position of the first labelled token (the completion's start), or the length when none is."""
    return next((i for i, v in enumerate(example["labels"]) if v != -100), len(example["labels"]))


def single(example: dict[str, Any]) -> dict[str, Any]:
    """An example as a unit of its own."""
    return {"input_ids": list(example["input_ids"]), "labels": list(example["labels"]),
            "segments": [0, len(example["input_ids"])], "n_examples": 1}


def pack(examples: list[dict[str, Any]], keys: list[Hashable], max_examples: int = MAX_EXAMPLES,
         min_prefix: int = MIN_PREFIX) -> list[dict[str, Any]]:
    """Units of causal examples: those with the same key (their passages), up to ``max_examples`` a unit, in the
    order their keys first appear, each unit's members in their own order.

    The shared prefix is the members' common tokens, cut so that it ends before every member's completion
    (each rest starts with a prompt token: no label falls where one rest follows another). A group whose
    prefix would be shorter than ``min_prefix`` stays as single examples.
    """
    order: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    units = []
    for members in order.values():
        for s in range(0, len(members), max_examples):
            group = [examples[i] for i in members[s:s + max_examples]]
            if len(group) == 1:
                units.append(single(group[0]))
                continue
            p = min(common_prefix([e["input_ids"] for e in group]), *(first_label(e) - 1 for e in group))
            if p < min_prefix:
                units += [single(e) for e in group]
                continue
            ids, labels, segments = list(group[0]["input_ids"][:p]), [-100] * p, [p]
            for e in group:
                ids += e["input_ids"][p:]
                labels += e["labels"][p:]
                segments.append(len(e["input_ids"]) - p)
            units.append({"input_ids": ids, "labels": labels, "segments": segments, "n_examples": len(group)})
    return units


def unpacked_tokens(unit: dict[str, Any]) -> int:
    """Tokens its examples hold apart: what reading them one by one would cost."""
    prefix, rests = unit["segments"][0], unit["segments"][1:]
    return sum(prefix + r for r in rests)


def collate(units: list[dict[str, Any]], pad_id: int, additive: bool = False) -> dict[str, Any]:
    """Pad units on the left, as :func:`rag_pipeline.generator.collate` pads causal examples, with a 4D attention mask
    ``(units, 1, width, width)``: boolean (True = may attend; what SDPA takes), or ``additive`` (0 or the float32 minimum:
    what eager attention adds). Padding attends to itself only, so that no row of the mask is empty."""
    import torch

    input_ids, _ = pad([u["input_ids"] for u in units], pad_id, "left")
    labels, _ = pad([u["labels"] for u in units], -100, "left")
    width = input_ids.size(1)
    positions = torch.zeros((len(units), width), dtype=torch.long)
    block = torch.full((len(units), width), -1, dtype=torch.long)  # -1 padding, 0 the prefix, k the k-th rest
    for b, u in enumerate(units):
        at, prefix = width - len(u["input_ids"]), u["segments"][0]
        positions[b, at:at + prefix] = torch.arange(prefix)
        block[b, at:at + prefix] = 0
        at += prefix
        for k, n in enumerate(u["segments"][1:], start=1):
            positions[b, at:at + n] = torch.arange(prefix, prefix + n)
            block[b, at:at + n] = k
            at += n
    q, kv = block[:, :, None], block[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = causal & (q >= 0) & ((kv == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool) & (q < 0)
    mask = allowed[:, None]
    if additive:
        mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "attention_mask": mask}
