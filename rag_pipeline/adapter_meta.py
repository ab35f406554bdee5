"""An adapter directory's ``rag_pipeline.json``: what a trained generator says of itself.

``train-generator`` writes it (:func:`write_adapter_meta`) beside the weights of every adapter it
saves, final and snapshots; ``ask``, ``evaluate``, ``serve``, ``export`` and ``train --init-adapter``
read it (:func:`read_adapter_meta`) to load the base model it was trained on and render the
prompt template it saw; ``calibrate`` reads it and writes it back with its ``abstention``. Both
go through :class:`AdapterMeta`, so no caller reads or writes the file's keys by hand.

The file is JSON with sorted keys (:func:`rag_pipeline.atomic.write_json`). Keys this module does
not know are kept as read (``extra``), so a read-modify-write loses nothing. Each write also renews the
directory's model card (:mod:`rag_pipeline.adapter_card`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag_pipeline.adapter_card import card_text, write_card
from rag_pipeline.atomic import write_json
from rag_pipeline.errors import InputError

if TYPE_CHECKING:
    from rag_pipeline.generator import Kind

META_FILE = "rag_pipeline.json"
KIND = "rag-generator"
Method = Literal["lora", "qlora", "full"]  # train-generator --method

# Weight files train-generator writes: a LoRA adapter (peft), or a full model for ``method: full``.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

_ALWAYS = ("kind", "method", "base_model")  # written even when absent from the file read (their defaults)


@dataclass
class AdapterMeta:
    """The contents of ``rag_pipeline.json``; fields left None are not written."""

    base_model: str  # the base model id or path the adapter was trained on
    method: Method = "lora"  # what the weights beside the file are: a (Q)LoRA adapter or a full model
    kind: str = KIND  # the artifact marker (rag_pipeline.atomic.Artifact)
    model_kind: Kind | None = None  # causal or seq2seq
    base_weights_hash: str | None = None  # rag_pipeline.model_paths.weights_hash of the base: checked on load
    template: str | None = None  # the prompt template's name
    template_text: dict[str, str] | None = None  # its text, so ask renders exactly what training saw
    dataset: str | None = None  # the RAFT dataset directory trained on
    dataset_fingerprint: str | None = None
    tasks: dict[str, float] | None = None  # the dataset's task mixture (qa, summary, extract); None: qa alone
    extract_schema: dict[str, Any] | None = None  # the JSON schema of the dataset's own extract records (ask's default)
    config: dict[str, Any] | None = None  # the TrainConfig, as a dict
    snapshot_step: int | None = None  # snapshots only: the optimizer step saved
    train_examples_seen: int | None = None  # snapshots only
    metrics: dict[str, Any] | None = None  # final adapter only: train-generator's summary
    evals: list[dict[str, Any]] | None = None  # every validation evaluation so far
    abstention: dict[str, dict[str, Any]] | None = None  # calibrate's result per decoding mode (answer.abstention.MODES), and yes_no
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def weight_files(self) -> tuple[str, ...]:
        """The weight file names one of which must sit beside the metadata."""
        return FULL_WEIGHTS if self.method == "full" else ADAPTER_WEIGHTS

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``rag_pipeline.json``."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (value is not None or f.name in _ALWAYS):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> AdapterMeta:
        """Check and type a parsed ``rag_pipeline.json``; ``where`` names it in errors.

        Raises:
            InputError: not an object, not train-generator metadata, or a key of the wrong type.
        """
        if not isinstance(obj, dict) or obj.get("kind", KIND) != KIND:
            raise InputError(f"{where} is not train-generator metadata: pass a train-generator output directory")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in obj.items() if k in names}
        if not isinstance(known.get("base_model"), str) or not known["base_model"]:
            raise InputError(f"{where} records no base_model: the adapter directory is damaged; retrain it with "
                             "train-generator or restore it from a copy")
        if known.get("method", "lora") not in ("lora", "qlora", "full"):
            raise InputError(f"{where} has method {known['method']!r}: expected lora, qlora or full")
        for key in ("abstention", "config", "metrics", "template_text", "tasks", "extract_schema"):
            if known.get(key) is not None and not isinstance(known[key], dict):
                raise InputError(f"{where}: {key} is a {type(known[key]).__name__}, not an object: the file is damaged")
        return cls(**known, extra={k: v for k, v in obj.items() if k not in names})


def read_adapter_meta(adapter_dir: str | Path) -> AdapterMeta:
    """The ``rag_pipeline.json`` of a trained adapter directory, checked to be readable and to have weights.

    Raises:
        InputError: no metadata (not a finished run), metadata that is not a JSON object, or no
            weight file beside it.
    """
    path = Path(adapter_dir) / META_FILE
    if not path.is_file():
        raise InputError(
            f"{adapter_dir} has no {META_FILE}: it is not a finished train-generator output "
            "(finish or --resume the training run, or pass the right directory)"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}): the adapter directory is damaged; retrain it with train-generator "
                         "or restore it from a copy") from None
    meta = AdapterMeta.from_dict(obj, str(path))
    if not any((Path(adapter_dir) / w).is_file() for w in meta.weight_files):
        raise InputError(f"{adapter_dir} has {META_FILE} but no weights ({' or '.join(meta.weight_files[:2])}): it is incomplete; "
                         "retrain it with train-generator or restore it from a copy")
    return meta


def write_adapter_meta(adapter_dir: str | Path, meta: AdapterMeta) -> None:
    """Write ``meta`` as the directory's ``rag_pipeline.json``, atomically (sorted keys, indented), and the model card
    that says the same (``README.md``, :mod:`rag_pipeline.adapter_card`; one written by hand is kept)."""
    card = card_text(adapter_dir, meta)
    write_json(Path(adapter_dir) / META_FILE, meta.to_dict())
    write_card(adapter_dir, card)
