"""Typed configuration: dataclass defaults < YAML file < command-line flags.

Each stage declares a dataclass whose fields carry a one-line help string (``opt(...)``).
:func:`add_arguments` turns the fields into ``--kebab-case`` flags (booleans get
``--flag/--no-flag``), and :func:`build_config` merges defaults, a YAML file and the flags
that were actually given, validating every key and value with a message that names the key
and the fix. A field a command sets itself, inherited from a shared settings type, is declared
with :func:`fixed`: it has no flag, and a YAML key naming it is refused with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from rag_pipeline.errors import ConfigError

T = TypeVar("T")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, flag: str = "") -> Any:
    """A dataclass field with a help string; ``factory`` for mutable defaults (lists); ``flag`` for a
    command-line name other than the field's (``--from`` for a field that cannot be called ``from``)."""
    metadata = {"help": help, **({"flag": flag} if flag else {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fixed(value: Any, why: str) -> Any:
    """A field the command sets itself (``value``): no flag, not settable in YAML; ``why`` is the reason given."""
    return dataclasses.field(default=value, init=False, metadata={"help": why, "fixed": True})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for ``X | None``."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Check and convert ``value`` for field ``key`` of type ``tp``; raise ConfigError naming the fix."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' ({source}) is null: give it a value or remove it to keep the default")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' ({source}) is {value!r}: choose one of {', '.join(map(str, choices))}"
            )
        return value
    if origin is list:
        (item_tp,) = get_args(inner) or (str,)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and source == "from the command line":
            # flags: repeated and/or comma-separated values flatten into one list
            value = [v.strip() for item in value for v in str(item).split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' ({source}) must be a list, got {value!r}")
        return [coerce(key, v, item_tp, source) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}' ({source}) must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}' ({source}) must be an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' ({source}) must be an integer, got {value!r}") from None
        if key == "seed" and not 0 <= number < 2**63:  # numpy's and torch's generators take no other seed
            raise ConfigError(f"config key 'seed' ({source}) is {number}: use an integer from 0 to 2**63 - 1")
        return number
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' ({source}) must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' ({source}) must be a number, got {value!r}") from None
        if number != number:  # nan passes every comparison's check
            raise ConfigError(f"config key '{key}' ({source}) is nan: give a number")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' ({source}) must be a string, got {value!r}")
        return str(value)
    if inner is Path:
        return Path(value)
    if inner is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' ({source}) must be a mapping of settings (in the YAML file), got {value!r}")
        return value
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                          "save it again as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}): fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # YAML reads on:, yes:, 1: or null: as a boolean, a number or null, not as a name
        raise ConfigError(f"config file {path} has a key {odd[0]!r} that YAML reads as {type(odd[0]).__name__}, not a name: "
                          "quote it, or fix its spelling")
    return data


def build_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Merge dataclass defaults < YAML file < ``overrides`` (flags that were given) into ``cls``.

    Raises:
        ConfigError: an unknown key (listing the valid ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    fixed_ = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if not f.init}
    values: dict[str, Any] = {}
    layers = []
    if yaml_path is not None:
        layers.append((load_yaml(yaml_path), f"in {yaml_path}"))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "from the command line"))
    for data, source in layers:
        for key, value in data.items():
            norm = key.replace("-", "_")
            if norm in fixed_:
                raise ConfigError(f"config key '{key}' {source} is not a setting of {cls.__name__} ({fixed_[norm]}): remove it")
            if norm not in hints or norm not in names:
                raise ConfigError(
                    f"unknown config key '{key}' {source} for {cls.__name__}: valid keys are {', '.join(sorted(names))}"
                )
            values[norm] = coerce(norm, value, hints[norm], source)
    return cls(**values)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--kebab-case`` flag per dataclass field; defaults are None so only given flags override.
    Mapping fields (a stage's settings inside a recipe) are for the YAML file only."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in the YAML given by --config)")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if f.name in skip or not f.init or tp is dict or get_origin(tp) is dict:  # fixed: the command sets it
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_ = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"default": None, "help": help_, "dest": f.name}
        if tp is bool and f.name.startswith("no_"):
            # BooleanOptionalAction reads any --no-x as "x is False": a field already named
            # no_x gets a plain switch instead.
            kwargs.update(action="store_const", const=True)
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif get_origin(tp) is list:
            kwargs["metavar"] = "A[,B...]"
            kwargs["action"] = "append"  # repeatable: --qa a --qa b, or --qa a,b
        flags = [f.metadata.get("flag") or _flag(f.name)] + ([f"-{f.name}"] if len(f.name) == 1 else [])
        group.add_argument(*flags, **kwargs)


def overrides_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The dataclass fields that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and getattr(args, f.name, None) is not None}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (Paths as strings)."""
    out = dataclasses.asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}
