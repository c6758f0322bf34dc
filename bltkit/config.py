"""Typed configuration: dataclass schemas, YAML values, unknown keys rejected.

Every component declares its schema as a ``@dataclass``; ``from_dict`` builds it from plain data
and raises ``ConfigError`` naming the offending key (as a dotted path) and the file it came from.
Derived sizes live in the dataclasses' properties, computed in one place.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Type, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

# Shipped configs are package data (bltkit/configs; the top-level configs/ is a link to it, for
# people who read and copy them), so an installed wheel finds them as an editable checkout does.
# Wheels install unzipped, so the resource is a real directory.
CONFIG_ROOT = Path(str(importlib.resources.files("bltkit").joinpath("configs")))


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and the file. ``key`` is the
    dotted key when one is to blame (``None`` for a cross-field check)."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key


def _where(path: str, source: str | None) -> str:
    return f"'{path}'" + (f" in {source}" if source else "")


def _error(path: str, source: str | None, what: str) -> ConfigError:
    return ConfigError(f"{_where(path, source)}: {what}", key=path)


def _convert(value: Any, tp: Any, path: str, source: str | None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own error names the key that does not fit
            return _convert(value, arms[0], path, source)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, source)
            except ConfigError as e:
                errors.append(str(e))
        raise _error(path, source, f"{value!r} does not fit {tp}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise _error(path, source, f"{value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _error(path, source, f"expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, source=source, prefix=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _error(path, source, f"expected a list, got {type(value).__name__} {value!r}")
        (inner,) = get_args(tp)[:1] or (Any,)
        out = [_convert(v, inner, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise _error(path, source, f"expected a mapping, got {type(value).__name__}")
        _, vt = get_args(tp) or (Any, Any)
        return {k: _convert(v, vt, f"{path}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _error(path, source, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _error(path, source, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads 1e-3 without a dot as a string
                except ValueError:
                    pass
            raise _error(path, source, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _error(path, source, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: Type[T], data: dict | None, source: str | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = getattr(cls, "RENAMED", {})  # a class's old key -> what replaced it
    for key in data:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else key
            if key in renamed:
                raise ConfigError(f"key {_where(path, source)} is no longer read: it is now {renamed[key]}; "
                                  f"rename it", key=path)
            raise ConfigError(
                f"unknown key {_where(path, source)}; {cls.__name__} accepts: {', '.join(sorted(fields))}", key=path
            )
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], path, source)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}{' in ' + source if source else ''}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:  # a nested section's check names its key: 'variants[0].patcher' in FILE
            where = _where(prefix, source) if prefix else f"{cls.__name__}{' in ' + source if source else ''}"
            raise ConfigError(f"{where}: {e}", key=prefix or None) from None
    return obj


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].strip()


@contextmanager
def blame_overrides(overrides: Optional[Sequence[str]], source: Optional[str], flag: str = "--set") -> Iterator[None]:
    """Re-word a ``ConfigError`` about a key that one of ``overrides`` set, so that it names the
    override (``unknown key 'optim.lrr' in --set optim.lrr=1``) instead of the config file the
    override was applied to; an error from a section's cross-field check names the overrides
    inside that section too."""
    try:
        yield
    except ConfigError as e:
        if not overrides or e.key is None:
            raise
        key, msg = e.key, str(e)
        for item in overrides:
            k = _override_key(item)
            if key == k or key.startswith((k + ".", k + "[")):  # the override set this key (or a mapping above it)
                where = f" in {source}" if source else ""
                new = msg.replace(f"'{key}'{where}", f"'{key}' in {flag} {item}", 1)
                raise ConfigError(new if new != msg else f"{msg} (set by {flag} {item})", key=key) from None
        inside = [item for item in overrides if _override_key(item).startswith(key + ".")]
        if inside:  # a section's validate() failed: name what the command line changed there
            raise ConfigError(f"{msg} (given {', '.join(f'{flag} {i}' for i in inside)})", key=key) from None
        raise


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML (or JSON) mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config {p}: {_one_line(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def write_yaml(data: Any, path: str | os.PathLike) -> None:
    """Write plain data (or a config dataclass) as YAML, atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(data), sort_keys=False), encoding="utf-8")
    os.replace(tmp, p)


def load(cls: Type[T], path: str | os.PathLike, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file, applying ``key.sub=value`` overrides."""
    data = read_yaml(path)
    if overrides:
        apply_overrides(data, overrides, source=str(path))
    with blame_overrides(overrides, str(path)):
        return from_dict(cls, data, source=str(path))


def apply_overrides(data: dict, overrides: list[str], source: str | None = None) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to nested ``data`` in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:  # YAML's message spans lines (with a caret): one line here
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_one_line(e)})", key=key) from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
                if not isinstance(node[part], dict):
                    raise ConfigError(f"override {item!r}: '{part}' is not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return data


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """Where a path named in a config points: as given when absolute or when it exists from the
    working directory, else relative to ``base_dir`` (the directory of the file that names it)
    when it exists there. A path found nowhere is returned as given, for the caller's error."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base_dir is None:
        return p
    beside = Path(base_dir) / p
    return beside if beside.exists() else p


def resolve_config_path(name_or_path: str | os.PathLike, kind: str) -> Path:
    """A path as given, or a shipped config name like ``tiny`` under ``configs/<kind>/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_ROOT / kind / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    available = sorted(q.stem for q in (CONFIG_ROOT / kind).glob("*.yaml")) if (CONFIG_ROOT / kind).is_dir() else []
    raise ConfigError(f"no config file {p} and no shipped {kind} config named {str(name_or_path)!r} (shipped: {available})")


def build_config(build: Callable[[dict, str], T], name_or_path: str | os.PathLike, kind: str,
                 overrides: list[str] | None = None, flag: str = "--set") -> tuple[T, Path]:
    """(``build(data, source)``, its file) for a config read by ``read_config``; an error about a key
    that an override set names the override (``blame_overrides``; ``flag`` is how the user gave it)."""
    data, p = read_config(name_or_path, kind, overrides)
    with blame_overrides(overrides, str(p), flag):
        return build(data, str(p)), p


def read_config(name_or_path: str | os.PathLike, kind: str, overrides: list[str] | None = None) -> tuple[dict, Path]:
    """(raw mapping, its file) for a YAML path or a shipped name under ``configs/<kind>/``, with
    ``key.sub=value`` overrides applied: the one reading step every typed ``load_*_config`` shares."""
    p = resolve_config_path(name_or_path, kind)
    data = read_yaml(p)
    if overrides:
        apply_overrides(data, overrides, source=str(p))
    return data, p
