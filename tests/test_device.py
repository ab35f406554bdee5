"""rag_pipeline.device: validation of device and dtype strings, resolution, the dtype choice."""

from __future__ import annotations

import pytest
import torch

from rag_pipeline import device as D
from rag_pipeline.errors import ConfigError, DeviceError


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1"])
def test_valid_devices_pass(value: str) -> None:
    D.check_device(value)


@pytest.mark.parametrize("cls,kw", [("rag_pipeline.answer.ask:AskConfig", {}), ("rag_pipeline.train:TrainConfig", {}),
                                    ("rag_pipeline.index.build:IndexConfig", {}), ("rag_pipeline.data.raft:RaftConfig", {}),
                                    ("rag_pipeline.eval.evaluate:EvaluateConfig", {})])
def test_every_config_checks_its_device(cls: str, kw: dict) -> None:
    import importlib

    module, name = cls.split(":")
    with pytest.raises(ConfigError, match="device is 'tpu': choose auto, cpu or cuda"):
        getattr(importlib.import_module(module), name)(device="tpu", **kw)


def test_bad_dtype_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="dtype is 'fp8': choose auto, float32, bfloat16 or float16"):
        D.check_dtype("fp8")
    with pytest.raises(ConfigError, match="choose float32, bfloat16 or float16"):
        D.torch_dtype("auto")
    assert D.torch_dtype("bfloat16") is torch.bfloat16


def test_auto_resolves_to_what_is_there() -> None:
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert D.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_asked_for_and_absent_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="use --device cpu"):
        D.resolve_device("cuda")


def test_dtype_auto_is_bf16_only_where_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "bf16_supported", lambda device: False)
    assert D.inference_dtype("auto", cpu) == "float32"
    monkeypatch.setattr(D, "bf16_supported", lambda device: True)
    assert D.inference_dtype("auto", cpu) == "bfloat16"
    assert D.inference_dtype("float32", cpu) == "float32"
