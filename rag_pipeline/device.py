"""Devices and dtypes: the one place that validates, resolves and chooses them.

Every config's ``__post_init__`` checks its ``device`` string with :func:`check_device` (and
``dtype`` with :func:`check_dtype`); the stages resolve it with :func:`resolve_device` and pick
weights and autocast with :func:`bf16_supported` / :func:`inference_dtype`. torch is imported
inside functions, so configs stay importable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag_pipeline.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # plus cuda:N
DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str, field: str = "device") -> None:
    """Raise ConfigError unless ``device`` is auto, cpu, cuda or cuda:N."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"{field} is {device!r}: choose auto, cpu or cuda")


def check_dtype(dtype: str, field: str = "dtype", auto: bool = True) -> None:
    """Raise ConfigError unless ``dtype`` is one of :data:`DTYPES` (or ``auto`` when allowed)."""
    choices = (("auto",) if auto else ()) + DTYPES
    if dtype not in choices:
        raise ConfigError(f"{field} is {dtype!r}: choose {', '.join(choices[:-1])} or {choices[-1]}")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present else CPU; ``cuda`` without CUDA is a DeviceError."""
    import torch

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r}: CUDA was asked for (--device {device}) but torch.cuda.is_available() is False; "
            "use --device cpu"
        )
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device``: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def inference_dtype(dtype: str, device: torch.device) -> str:
    """The weight dtype for generation: ``auto`` is bfloat16 where it runs fast (bf16 GPUs, CPUs
    with AVX512-BF16/AMX: ~1.6x fp32 on a 720-token prompt), else float32."""
    if dtype == "auto":
        return "bfloat16" if bf16_supported(device) else "float32"
    check_dtype(dtype, auto=False)
    return dtype


def torch_dtype(dtype: str) -> Any:
    """The torch dtype named ``dtype`` (one of :data:`DTYPES`)."""
    import torch

    check_dtype(dtype, auto=False)
    return getattr(torch, dtype)
