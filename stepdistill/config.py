"""Typed dataclass configs: YAML presets and strict dotted overrides (``train.max_steps=100``).

Recipes call ``cfg = load_config(Config)``; library code never sees configs. Override values are
read as YAML and checked against the declared type (str, bool and Path fields take the raw text,
so ``name=007`` stays ``"007"``). Each mistake raises one ``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import pathlib
import sys
import tempfile
import types
import typing
from typing import Any, Iterable, Literal, TypeVar, Union

import yaml

__all__ = ["ConfigError", "load_config", "from_dict", "apply_overrides", "to_dict", "save_config"]

T = TypeVar("T")
_NONE_WORDS = {"null", "none", "~"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_MISSING = dataclasses.MISSING
RECORD_KEY = "resumes"  # a run's config.yaml: its resume history, a record rather than a setting


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which turned
    `mixed_precision: no` into False; a bool field still accepts those words (`_BOOL_WORDS`)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text_or_stream) -> Any:
    return yaml.load(text_or_stream, Loader=_Loader)


class ConfigError(ValueError):
    """A mistake in a config file or command-line override (unknown key, wrong type, ...)."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """A config's keys, the class's own before those it inherits: a recipe's `model`, `loss` and `optim` come before
    the `RecipeConfig` sections in its config.yaml and help, as a reader looks for them."""
    own = list(cls.__dict__.get("__annotations__", {}))
    fields = [f for f in dataclasses.fields(cls) if f.init]
    return {f.name: f for f in sorted(fields, key=lambda f: (f.name not in own, own.index(f.name) if f.name in own
                                                             else 0))}


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The non-None members of a Union (``Optional[X]``, ``X | None``); None if not a Union."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return None


def _section(tp: Any) -> type | None:
    """The dataclass behind ``tp`` (also through ``Optional``); None if ``tp`` is not a section."""
    members = _members(tp) or (tp,)
    tp = members[0] if len(members) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "").replace("pathlib.", "")


def _str_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))


def _unknown(where: str, key: Any, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    place = f" in '{where}'" if where else ""
    msg = f"unknown config key '{_join(where, str(key))}'; valid keys{place}: {', '.join(valid)}"
    close = difflib.get_close_matches(str(key), valid, n=1)
    return ConfigError(msg + (f"; did you mean '{close[0]}'?" if close else ""))


def _coerce(tp: Any, v: Any, key: str) -> Any:
    """Check ``v`` against the declared type ``tp`` and convert it (list -> tuple, str -> Path, ...)."""
    bad = ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {v!r}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if (members := _members(tp)) is not None:
        if v is None and len(members) < len(args):
            return None
        for member in members:
            try:
                return _coerce(member, v, key)
            except ConfigError:
                if len(members) == 1:
                    raise  # Optional[X]: X's own message is the precise one
        raise bad
    if (section := _section(tp)) is not None:
        if isinstance(v, section):
            return v
        if not isinstance(v, dict):
            keys = ", ".join(sorted(_fields(section)))
            raise ConfigError(f"config key '{key}' is a section with keys {keys}; got {v!r}")
        return from_dict(section, v, where=key)
    if tp is Any:
        return v
    if origin is Literal:
        if any(v == a and type(v) is type(a) for a in args):
            return v
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(repr, args))}; got {v!r}")
    if tp is bool and isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[v.strip().lower()]
    if tp in (int, float) and isinstance(v, str):  # PyYAML reads `1e-4` as a string
        try:
            v = float(v) if any(c in v.lower() for c in ".en") else int(v)
        except ValueError:
            raise bad from None
    if tp is int and type(v) is float and v.is_integer():
        v = int(v)  # `max_steps: 1e5` is a fine way to write 100000
    if tp is float and type(v) in (int, float) and not math.isfinite(v):
        raise ConfigError(f"config key '{key}' must be a finite number; got {v!r}")
    if tp in (str, pathlib.Path) and isinstance(v, str) and (v == "~" or v.startswith("~/")):
        v = os.path.expanduser(v)  # a shell leaves `key=~/runs` unexpanded
    if tp is pathlib.Path and isinstance(v, (str, os.PathLike)):
        return pathlib.Path(v)
    if type(v) is tp or (tp is float and type(v) is int):  # no bool for int, no str(7) for `name: 007`
        return tp(v)
    if tp in (bool, int, float, str, pathlib.Path):
        raise bad
    if tp in (list, tuple, dict):
        origin, args = tp, ()
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                raise bad
            return tuple(_coerce(a, x, f"{key}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
        return origin(_coerce(args[0] if args else Any, x, f"{key}[{i}]") for i, x in enumerate(v))
    if origin is dict:
        if not isinstance(v, dict):
            raise bad
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, f"{key} (key {k!r})"): _coerce(vt, x, _join(key, str(k)))
                for k, x in v.items()}
    raise TypeError(f"config key '{key}': unsupported field type {tp!r}")


def from_dict(cls: type[T], data: dict, *, where: str = "") -> T:
    """Build ``cls`` strictly from a (nested) dict; absent keys keep the dataclass defaults.

    Unknown keys, wrong types and missing required keys raise ConfigError; ``where`` is the
    dotted prefix of this section, used in messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or '<top level>'}' expects a mapping, got {data!r}")
    fields, hints = _fields(cls), typing.get_type_hints(cls)
    for k in data:
        if k not in fields:
            raise _unknown(where, k, fields)
    for name, f in fields.items():
        if name not in data and f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"config key '{_join(where, name)}' is required")
    return cls(**{k: _coerce(hints[k], _over_default(fields[k], v), _join(where, k)) for k, v in data.items()})


def _over_default(f: dataclasses.Field, v: Any) -> Any:
    """A mapping given for a section updates the field's own default, not the section class's:
    with ``train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1100))``,
    ``train.lr=1e-4`` must keep ``max_steps`` at 1100."""
    default = f.default_factory() if f.default_factory is not _MISSING else f.default
    if isinstance(v, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
        return _merge(to_dict(default), v)
    return v


def to_dict(cfg: Any) -> Any:
    """``cfg`` as plain YAML-safe types: dataclasses -> dicts, tuples -> lists, Paths -> str."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {name: to_dict(getattr(cfg, name)) for name in _fields(type(cfg))}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return str(cfg) if isinstance(cfg, pathlib.PurePath) else cfg


def _merge(base: dict, new: dict) -> dict:
    """Deep merge: a mapping given to a section updates only the keys it names."""
    return {**base, **{k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict)
                       else v for k, v in new.items()}}


def _override(cls: type, data: dict, text: str) -> None:
    """Apply one ``section.key=value`` override to the plain dict ``data`` (in place)."""
    dotted, eq, raw = text.removeprefix("--").partition("=")
    if not eq:
        raise ConfigError(f"override {text!r} must look like key=value")
    parts, node = dotted.strip().split("."), data
    for i, part in enumerate(parts):
        where, fields = ".".join(parts[:i]), _fields(cls)
        if part not in fields:
            raise _unknown(where, part, fields)
        tp = typing.get_type_hints(cls)[part]
        if i < len(parts) - 1:
            if (cls := _section(tp)) is None:
                raise ConfigError(f"config key '{_join(where, part)}' is a {_type_name(tp)}, "
                                  f"not a section; cannot set '{dotted}'")
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a section absent from a preset, or an Optional one that was None
            node = node[part]
    plain = _members(tp) or (tp,)
    if len(plain) == 1 and (plain[0] in (str, bool, pathlib.Path) or _str_literal(plain[0])):
        value = None if _members(tp) is not None and raw.strip().lower() in _NONE_WORDS else raw
    else:
        try:
            value = _yaml(raw)
        except yaml.YAMLError:
            raise ConfigError(f"config key '{dotted}': cannot parse {raw!r} as YAML") from None
    old = node.get(parts[-1])
    if _section(tp) and isinstance(old, dict) and isinstance(value, dict):
        value = _merge(old, value)
    node[parts[-1]] = value


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """A new config with ``key=value`` overrides (leading ``--`` allowed) applied in order to ``cfg``."""
    data = to_dict(cfg)
    for text in overrides:
        _override(type(cfg), data, text)
    return from_dict(type(cfg), data)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically: a temp file in the same folder, then ``os.replace``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = _yaml(f)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not readable YAML: {reason}") from None
    if not isinstance(data, (dict, type(None))):
        kind = type(data).__name__
        raise ConfigError(f"config file '{path}' must hold a mapping at top level, got {kind}")
    data = data or {}
    data.pop(RECORD_KEY, None)  # a run's config.yaml is a preset too: its resume history is not a setting
    return data


def _help(cls: type, values: dict, where: str = "") -> list[str]:
    """One line per leaf key: dotted name, type, default and the field's ``metadata['help']``."""
    lines, hints = [], typing.get_type_hints(cls)
    for name, f in _fields(cls).items():
        key, tp, value = _join(where, name), hints[name], values.get(name, "<required>")
        if (section := _section(tp)) is not None and isinstance(value, (dict, type(None))):
            lines += _help(section, value or {}, key)
        else:
            note = f"  # {f.metadata['help']}" if "help" in f.metadata else ""
            lines.append(f"  {key:<28} {_type_name(tp):<20} default: {value!r}{note}")
    return lines


def _defaults(cls: type) -> dict:
    """The default values of ``cls`` as a plain dict (required fields left out)."""
    fields = _fields(cls).items()
    return {name: to_dict(f.default if f.default_factory is _MISSING else f.default_factory())
            for name, f in fields if (f.default, f.default_factory) != (_MISSING, _MISSING)}


def load_config(cls: type[T], argv: list[str] | None = None) -> T:
    """Build ``cls`` from its defaults, then ``--config PATH.yaml``, then dotted overrides.

    ``argv`` (default ``sys.argv[1:]``) accepts ``key=value``, ``--key=value``, ``--key value``
    and ``--config PATH`` / ``--config=PATH``; ``-h`` / ``--help`` prints every key and exits 0.
    """
    args, config_path, overrides = list(sys.argv[1:] if argv is None else argv), None, []
    while args:
        token = args.pop(0)
        if token in ("-h", "--help"):
            prog = os.path.basename(sys.argv[0])
            print(f"usage: {prog} [--config PATH.yaml] [key=value | --key value ...]\nkeys:")
            print("\n".join(_help(cls, _defaults(cls))))
            sys.exit(0)
        key, eq, value = token.partition("=")
        if key.startswith("--") and not eq:  # two-token form: --key value
            if not args or args[0].startswith("--"):
                raise ConfigError(f"config key '{key[2:]}' needs a value: --{key[2:]} VALUE")
            value, eq = args.pop(0), "="
        if not eq or (key.startswith("-") and not key.startswith("--")):
            raise ConfigError(f"expected key=value, --key=value or --key value; got {token!r}")
        if key.removeprefix("--") == "config":
            config_path = value
        else:
            overrides.append(f"{key.removeprefix('--')}={value}")
    data = _load_yaml(config_path) if config_path is not None else {}
    for text in overrides:
        _override(cls, data, text)
    return from_dict(cls, data)
