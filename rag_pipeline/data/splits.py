"""Small data, handled honestly: a ratio split never leaves train empty, and a tiny train split is said out loud.

``build-raft-dataset`` splits questions by source document (a seeded hash of the document into
train/validation/test by ``--split-ratio``), so a handful of documents can all hash away from
train. :func:`ensure_train` then puts every example in train and says why; :func:`train_warning`
is the stats table's line when train is too small to learn from.
"""

from __future__ import annotations

import math
from typing import TypeVar

T = TypeVar("T")

SPLITS = ("train", "validation", "test")
# Below this many training examples a LoRA run learns little beyond the answer format (the
# reference adapter used 6,320; the quick start's 192 taught the format only).
MIN_TRAIN_EXAMPLES = 100


def documents_needed(ratio: list[float]) -> int:
    """Source documents a ratio split needs before every non-zero share expects one: 1 / smallest share."""
    shares = [r / sum(ratio) for r in ratio if r > 0]
    return math.ceil(1 / min(shares) - 1e-9)


def ensure_train(parts: dict[str, list[T]], ratio: list[float], groups: int) -> tuple[dict[str, list[T]], str | None]:
    """Per-split items with train never empty while another split has items (when train's share is not 0).

    Args:
        parts: items by split, as the seeded hash put them.
        ratio: the train/validation/test shares.
        groups: the number of source documents the items came from.

    Returns:
        (the parts, a warning or None): when train came out empty, every item is moved to train
        and the warning says how many documents a split needs.
    """
    moved = sum(len(parts[s]) for s in SPLITS[1:])
    if parts["train"] or not moved or ratio[0] <= 0:
        return parts, None
    out = {"train": [x for s in SPLITS for x in parts[s]], "validation": [], "test": []}
    need = documents_needed(ratio)
    return out, (f"all {moved} examples went to train: their {groups} source document(s) all hashed to validation/test, and a "
                 f"{'/'.join(f'{r:g}' for r in ratio)} split needs about {need} documents or more; validation and test are empty")


def train_warning(n_train: int) -> str | None:
    """The stats table's warning when train is too small to learn from; None otherwise."""
    if 0 < n_train < MIN_TRAIN_EXAMPLES:
        return (f"train holds only {n_train} examples: too few to learn from (LoRA needs a few hundred or more; "
                f"the reference adapter used 6,320); add questions, or generate some with --generate-questions")
    return None
