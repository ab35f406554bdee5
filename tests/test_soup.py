"""scripts/soup_adapters.py: two LoRA adapters' updates mixed exactly (a soup with a third too), on a tiny Llama built in code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from rag_pipeline import generator as G  # noqa: E402
from rag_pipeline.adapter_meta import read_adapter_meta  # noqa: E402

try:
    from tests.tiny_models import build_tiny_llama, make_adapter
except ImportError:
    from tiny_models import build_tiny_llama, make_adapter  # type: ignore[no-redef]

from conftest import load_script  # noqa: E402


def _script():
    return load_script("soup_adapters")


def _noisy(adapter: Path, copy_to: Path | None, gen: torch.Generator, scale: float, keep: bool = True) -> Path:
    """``adapter`` (copied to ``copy_to`` first, if given) with Gaussian noise of ``scale`` added to every LoRA matrix
    (``keep=False``: the noise alone)."""
    if copy_to is not None:
        shutil.copytree(adapter, copy_to)
        adapter = copy_to
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: (v if keep else 0) + torch.randn(v.shape, generator=gen) * scale for k, v in weights.items()},
              str(adapter / "adapter_model.safetensors"))
    return adapter


def _merged(base: Path, adapter: Path | None) -> dict[str, torch.Tensor]:
    model, _, _ = G.load_generator(str(base), str(adapter) if adapter else None, device="cpu", merge=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_soup_is_the_weighted_sum_of_the_two_updates(tmp_path: Path) -> None:
    base = build_tiny_llama(tmp_path / "base")
    first = make_adapter(base, tmp_path / "first")
    second = _noisy(first, tmp_path / "second", torch.Generator().manual_seed(1), 0.5)
    _script().soup(first, second, 0.3, tmp_path / "soup")

    plain, one, two, mixed = (_merged(base, a) for a in (None, first, second, tmp_path / "soup"))
    changed = [k for k in plain if not torch.equal(plain[k], one[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    for k in plain:
        want = plain[k] + 0.3 * (one[k] - plain[k]) + 0.7 * (two[k] - plain[k])
        assert torch.allclose(mixed[k], want, atol=1e-6), k
    meta = read_adapter_meta(tmp_path / "soup")
    assert meta.abstention is None and meta.metrics is None and meta.evals is None  # calibrate it again; no run's figures
    assert meta.extra["soup"]["weight"] == 0.3 and "a weight-space mix (soup)" in (tmp_path / "soup" / "README.md").read_text()


def test_a_soup_mixes_again_with_an_adapter_of_another_rank(tmp_path: Path) -> None:
    """A soup (rank 2r) and a third adapter (rank r) of the same scale: 0.6 x soup + 0.4 x third, exactly."""
    base = build_tiny_llama(tmp_path / "base")
    first = make_adapter(base, tmp_path / "first")
    gen = torch.Generator().manual_seed(2)
    for name in ("second", "third"):
        _noisy(first, tmp_path / name, gen, 0.5)
    _script().soup(first, tmp_path / "second", 0.5, tmp_path / "soup")
    _script().soup(tmp_path / "soup", tmp_path / "third", 0.6, tmp_path / "soup3")
    ranks = [json.loads((tmp_path / d / "adapter_config.json").read_text())["r"] for d in ("first", "soup", "soup3")]
    assert ranks == [ranks[0], 2 * ranks[0], 3 * ranks[0]]
    plain, one, two, three, mixed = (_merged(base, a) for a in (None, first, tmp_path / "second", tmp_path / "third", tmp_path / "soup3"))
    for k in plain:
        want = plain[k] + 0.3 * (one[k] - plain[k]) + 0.3 * (two[k] - plain[k]) + 0.4 * (three[k] - plain[k])
        assert torch.allclose(mixed[k], want, atol=1e-6), k


def test_adapters_of_another_scale_are_refused(tmp_path: Path) -> None:
    base = build_tiny_llama(tmp_path / "base")
    first = make_adapter(base, tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    config = (second / "adapter_config.json").read_text().replace('"r": 4', '"r": 8')  # the same alpha: half the scale
    (second / "adapter_config.json").write_text(config)
    with pytest.raises(SystemExit, match="differ in"):
        _script().soup(first, second, 0.5, tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_a_soup_never_replaces_an_input_or_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from rag_pipeline.errors import ConfigError

    base = build_tiny_llama(tmp_path / "base")
    first = make_adapter(base, tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    before = (first / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="also an input"):
        _script().soup(first, second, 0.5, first)
    assert (first / "adapter_model.safetensors").read_bytes() == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError):
        _script().soup(first, second, 0.5, mine)
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_soup_stored_at_a_lower_rank_is_each_update_s_best_approximation(tmp_path: Path) -> None:
    """--rank R: each module's mixed update is replaced by its top R singular directions (the closest rank-R update);
    at the summed rank nothing is cut."""
    base = build_tiny_llama(tmp_path / "base")
    first = make_adapter(base, tmp_path / "first")
    gen = torch.Generator().manual_seed(3)
    second = _noisy(first, tmp_path / "second", gen, 0.3, keep=False)
    _noisy(first, None, gen, 0.3, keep=False)
    r = json.loads((first / "adapter_config.json").read_text())["r"]
    assert _script().soup(first, second, 0.4, tmp_path / "exact") == 1.0
    kept = _script().soup(first, second, 0.4, tmp_path / "cut", rank=r)
    assert 0.5 < kept < 1.0 and json.loads((tmp_path / "cut" / "adapter_config.json").read_text())["r"] == r
    plain, exact, cut = (_merged(base, a) for a in (None, tmp_path / "exact", tmp_path / "cut"))
    changed = [k for k in plain if not torch.equal(plain[k], exact[k])]
    assert changed
    for k in changed:
        u, sv, vh = torch.linalg.svd((exact[k] - plain[k]).double(), full_matrices=False)
        want = plain[k].double() + (u[:, :r] * sv[:r]) @ vh[:r]
        assert torch.allclose(cut[k].double(), want, atol=1e-5), k
        assert torch.linalg.matrix_rank(cut[k].double() - plain[k].double(), atol=1e-5) <= r
