"""scripts/order_consistency.py: the agreement of two answers, and the reversed answers read back from their cache."""

from __future__ import annotations

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def order():
    return load_script("order_consistency")


def test_agreement_is_the_token_f1_of_the_answers_without_citations(order):
    assert order.agreement("the Nile [1]", "Nile [2]") == 1.0  # articles and citations aside, the same answer
    assert order.agreement("Paris [1]", "London [2]") == 0.0
    assert order.agreement("river Nile [1]", "Nile [1]") == pytest.approx(2 / 3)


def test_reversed_answers_come_from_the_cache_without_loading_a_model(order, tmp_path):
    cache = tmp_path / "dev.json"
    cache.write_text(json.dumps({"q1": {"raw": "Nile [2]", "margin": 1.5}}), encoding="utf-8")
    assert order.swapped("no-such-adapter", "no-such-index", [], cache) == {"q1": {"raw": "Nile [2]", "margin": 1.5}}
