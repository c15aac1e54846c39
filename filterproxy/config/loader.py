"""YAML with line numbers, and the typed section reader every config parser uses.

Every mapping and sequence loaded here remembers the file and line of its keys/items, so any error
found later (in config sections, policies, client rules) can name ``file:line`` and what was expected.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from filterproxy.vocabulary import ConfigError


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers the line of every key (1-based)."""

    line: int = 0
    file: str = ""
    key_lines: dict[Any, int]

    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key is not None else self.line
        return f"{self.file}:{line}"


class _List(list[Any]):
    line: int = 0
    file: str = ""
    item_lines: list[int]

    def where(self, i: int | None = None) -> str:
        line = self.item_lines[i] if i is not None and i < len(self.item_lines) else self.line
        return f"{self.file}:{line}"


def load_yaml(path: str) -> Any:
    """Load YAML keeping line numbers on mappings and sequences; syntax errors → ConfigError."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
        loader.flatten_mapping(node)
        m = _Map()
        m.line = node.start_mark.line + 1
        m.file = path
        m.key_lines = {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if key in m:
                raise ConfigError(f"{path}:{k_node.start_mark.line + 1}: duplicate key {key!r}")
            m[key] = loader.construct_object(v_node, deep=True)
            m.key_lines[key] = k_node.start_mark.line + 1
        return m

    def construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _List:
        seq = _List(loader.construct_object(n, deep=True) for n in node.value)
        seq.line = node.start_mark.line + 1
        seq.file = path
        seq.item_lines = [n.start_mark.line + 1 for n in node.value]
        return seq

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_seq)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=Loader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        context = ""
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem or exc}{context}") from None


def where_item(raw: Any, i: int, path: str) -> str:
    """``file:line`` of item ``i`` of a loaded sequence (``path:?`` for a plain list)."""
    return raw.where(i) if isinstance(raw, _List) else f"{path}:?"


def where_key(raw: Any, key: Any, path: str) -> str:
    """``file:line`` of ``key`` of a loaded mapping (``path:?`` for a plain dict)."""
    return raw.where(key) if isinstance(raw, _Map) else f"{path}:?"


class Section:
    """Reads one mapping with type checks; unknown keys are errors (typos must not pass silently)."""

    def __init__(self, data: Any, name: str, where: str):
        if data is None:
            data = _Map()
            data.line, data.file, data.key_lines = 0, where.rsplit(":", 1)[0], {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: '{name}' must be a mapping, got {type(data).__name__}")
        self.data = data
        self.name = name
        self.where_default = where
        self.used: set[str] = set()

    @property
    def file(self) -> str:
        return self.data.file if isinstance(self.data, _Map) else self.where_default.rsplit(":", 1)[0]

    def where(self, key: str | None = None) -> str:
        return self.data.where(key) if isinstance(self.data, _Map) else self.where_default

    def get(self, key: str, default: Any = None, *, types: tuple[type, ...] = (), choices: tuple[Any, ...] = ()) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if types and not isinstance(v, types) or (types and isinstance(v, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{self.where(key)}: '{self.name}.{key}' must be {names}, got {v!r}")
        if choices and v not in choices:
            raise ConfigError(
                f"{self.where(key)}: '{self.name}.{key}' must be one of {', '.join(map(str, choices))}, got {v!r}"
            )
        return v

    def section(self, key: str) -> Section:
        """The sub-mapping ``key`` as a Section of its own (missing: an empty one)."""
        return Section(self.get(key), key, self.where(key))

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"{self.where(k)}: unknown key '{self.name}.{k}' (expected one of: {', '.join(sorted(self.used))})"
            )


def parse_hostport(text: str, where: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` → (host, port)."""
    t = str(text).strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", t)
    if m:
        host, port = m.group(1), m.group(2)
    elif t.count(":") == 1:
        host, port = t.split(":")
    else:  # a bare name, address or bare IPv6
        host, port = t, None
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in {text!r} (expected HOST:PORT)") from None
    if not host or not 0 < p < 65536:
        raise ConfigError(f"{where}: invalid address {text!r} (expected HOST:PORT)")
    return host, p


def check_upstream(addr: str, where: str) -> None:
    """Upstream syntax: ``IP[:PORT]``, ``tcp://IP[:PORT]``, ``tls://HOST[:PORT][#IP]``, ``https://HOST/PATH``."""
    a = addr.strip()
    if a.startswith("https://"):
        return
    for prefix in ("tls://", "tcp://", "udp://"):
        if a.startswith(prefix):
            a = a[len(prefix) :]
            break
    a = a.split("#", 1)[0]
    host, _port = parse_hostport(a, where, 53)
    if not host:
        raise ConfigError(f"{where}: invalid upstream {addr!r}")
