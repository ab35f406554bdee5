"""Config: precedence, validation messages, every shipped YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from rag_pipeline.config import build_config, load_yaml
from rag_pipeline.errors import ConfigError
from rag_pipeline.index.build import IndexConfig


def test_precedence_defaults_yaml_flags(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("chunk_overlap: 8\nbatch_size: 16\n")
    cfg = build_config(IndexConfig, y, {"batch_size": 4, "index": None})
    assert (cfg.chunk_overlap, cfg.batch_size, cfg.index) == (8, 4, IndexConfig().index)


def test_unknown_key_names_key_and_valid_keys(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("chunk_sise: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'chunk_sise' in .*valid keys are .*chunk_size"):
        build_config(IndexConfig, y)


@pytest.mark.parametrize("yaml_text,match", [
    ("chunk_size: lots\n", "'chunk_size' .* must be an integer"),
    ("index_type: btree\n", "'index_type' .* choose one of auto, flat, hnsw, ivf"),
    ("force: maybe\n", "'force' .* must be true or false"),
    ("chunk_overlap: -1\n", "chunk_overlap must be >= 0"),
    ("chunk_size: 16\nchunk_overlap: 16\n", "chunk_overlap 16 is not below chunk_size 16: .* lower --chunk-overlap or raise --chunk-size"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
    ("target_recall: .nan\n", "'target_recall' .* is nan: give a number"),
    ("seed: -1\n", "'seed' .* is -1: use an integer from 0 to 2\\*\\*63 - 1"),
])
def test_bad_values_are_named(tmp_path: Path, yaml_text: str, match: str) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        build_config(IndexConfig, y)


def test_a_yaml_file_that_is_not_utf8_or_has_a_key_that_is_not_a_name(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_bytes("# caf\u00e9\nchunk_size: 64\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 5\): save it again as UTF-8"):
        build_config(IndexConfig, y)
    y.write_text("on: true\n")
    with pytest.raises(ConfigError, match="has a key True that YAML reads as bool, not a name: quote it"):
        build_config(IndexConfig, y)


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(IndexConfig, tmp_path / "nope.yaml")


def _command_of(path: Path) -> str:
    from rag_pipeline.cli import COMMANDS

    words = path.read_text(encoding="utf-8").splitlines()[0].split()
    if words[:2] == ["#", "rag-pipeline"]:
        words = ["#", *words[2:]]
    assert words[0] == "#" and words[1] in COMMANDS, f"{path} must start with a comment showing its command"
    return words[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses(path: Path) -> None:
    import importlib

    from rag_pipeline.cli import COMMANDS

    command = _command_of(path)
    module, cls_name, _, _ = COMMANDS[command]
    cls = getattr(importlib.import_module(module), cls_name)
    assert load_yaml(path)
    build_config(cls, path)


ANSWER_CONFIGS = [("ask", {}), ("serve", {}), ("evaluate", {}), ("calibrate", {"adapter": "runs/a"})]


@pytest.mark.parametrize("command,given", ANSWER_CONFIGS, ids=[c for c, _ in ANSWER_CONFIGS])
def test_every_answer_config_takes_the_device_flag_alike(command: str, given: dict) -> None:
    """ask, serve, evaluate and calibrate share one answering settings type: --device cuda:1 is accepted by
    each (evaluate once refused it), --device tpu refused by each with the same message."""
    import importlib

    from rag_pipeline.answer.settings import Answering
    from rag_pipeline.cli import COMMANDS, build_parser
    from rag_pipeline.config import overrides_from_args

    module, cls_name, _, _ = COMMANDS[command]
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, Answering)
    args = build_parser(command).parse_args([command, "--device", "cuda:1"])
    assert build_config(cls, None, {**given, **overrides_from_args(cls, args)}).device == "cuda:1"
    with pytest.raises(ConfigError, match=r"^device is 'tpu': choose auto, cpu or cuda$"):
        build_config(cls, None, {**given, "device": "tpu"})


def test_a_fixed_field_has_no_flag_and_a_yaml_key_naming_it_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rag_pipeline.cli import main
    from rag_pipeline.eval.calibrate import CalibrateConfig

    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    help_text = capsys.readouterr().out
    assert "--max-prompt-tokens" in help_text and "--min-score" in help_text  # shared settings calibrate once ignored
    assert "--answer-check" not in help_text and "--do-sample" not in help_text
    y = tmp_path / "c.yaml"
    y.write_text("adapter: runs/a\nanswer_check: grounded\n")
    with pytest.raises(ConfigError, match=r"'answer_check' in .* is not a setting of CalibrateConfig \(answers scored as ask shows them.*\): remove it"):
        build_config(CalibrateConfig, y)
    assert build_config(CalibrateConfig, None, {"adapter": "runs/a"}).answer_check == "grounded"  # as ask shows answers
    assert build_config(CalibrateConfig, None, {"adapter": "runs/a", "count_checked": False}).answer_check == "off"
