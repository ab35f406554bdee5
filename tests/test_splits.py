"""The small-data split rule: train is never left empty by a ratio split, and a tiny train is warned about."""

from __future__ import annotations

from rag_pipeline.data.splits import MIN_TRAIN_EXAMPLES, documents_needed, ensure_train, train_warning


def test_empty_train_takes_every_example_with_a_warning() -> None:
    parts = {"train": [], "validation": ["a", "b"], "test": ["c"]}
    out, warning = ensure_train(parts, [0.8, 0.1, 0.1], groups=2)
    assert out == {"train": ["a", "b", "c"], "validation": [], "test": []}
    assert "all 3 examples went to train" in warning and "2 source document(s)" in warning and "about 10 documents" in warning


def test_train_with_rows_or_no_train_share_is_left_alone() -> None:
    parts = {"train": ["a"], "validation": ["b"], "test": []}
    assert ensure_train(parts, [0.8, 0.1, 0.1], groups=2) == (parts, None)
    nothing_for_train = {"train": [], "validation": ["b"], "test": ["c"]}
    assert ensure_train(nothing_for_train, [0.0, 0.5, 0.5], groups=2) == (nothing_for_train, None)  # asked for
    empty = {"train": [], "validation": [], "test": []}
    assert ensure_train(empty, [0.8, 0.1, 0.1], groups=0) == (empty, None)


def test_documents_needed_and_train_warning() -> None:
    assert documents_needed([0.8, 0.1, 0.1]) == 10 and documents_needed([0.6, 0.2, 0.2]) == 5 and documents_needed([1, 0, 0]) == 1
    assert "only 12 examples" in train_warning(12)
    assert train_warning(MIN_TRAIN_EXAMPLES) is None and train_warning(0) is None  # an empty train has its own warning
