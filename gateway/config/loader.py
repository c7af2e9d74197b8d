"""Loading a policy file: YAML with positions, ``${ENV}`` substitution, validation.

Every error becomes a :class:`gateway.errors.ConfigIssue` pointing at the file, line
and column of the offending key or value, and says what was expected. All errors of a
file are collected, not just the first.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A `{name}` or `{name:path}` group (or anything else between braces without spaces or
# flow indicators: the model then says what a parameter may be) inside a path template.
_TEMPLATE_GROUP = re.compile(r"\{[^\s{}\[\],]*\}")
_FLOW_ENDS = frozenset(" \t\r\n\0,[]{}#\x85\u2028\u2029")


class _Loader(yaml.SafeLoader):
    """The safe loader, where a plain path template may follow `path:` in flow style.

    `match: {path: /users/{id}}` is what people write, but braces end a YAML flow
    mapping, so that line is invalid YAML. This scanner reads the plain value of a
    `path` key in a flow collection on across `{...}` groups. It works on tokens, not
    on the text: quoted scalars and comments are never looked at, nothing is inserted
    (every line and column stays that of the file), and a document that standard YAML
    accepts means exactly the same here, since it only reads on where the standard
    scanner would have stopped with an error.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path_value_next = False  # the value indicator of a `path` key was just read
        self._path_value = False  # the token being fetched is such a value

    def fetch_more_tokens(self) -> None:
        self._path_value, self._path_value_next = self._path_value_next, False
        super().fetch_more_tokens()

    def fetch_value(self) -> None:
        key = self.possible_simple_keys.get(self.flow_level)
        after_path = False
        if key is not None and self.flow_level:
            token = self.tokens[key.token_number - self.tokens_taken]
            after_path = isinstance(token, yaml.ScalarToken) and token.value == "path"
        super().fetch_value()
        self._path_value_next = after_path

    def scan_plain(self) -> yaml.ScalarToken:
        token: yaml.ScalarToken = super().scan_plain()
        if not self._path_value:
            return token
        value, end = token.value, token.end_mark
        while self.peek() == "{" and self.get_mark().index == end.index:
            group = _TEMPLATE_GROUP.match(self.buffer, self.pointer)
            if group is None:
                break
            self.forward(len(group.group()))
            value += group.group()
            end = self.get_mark()
            if self.peek() not in _FLOW_ENDS:
                more = super().scan_plain()
                value, end = value + more.value, more.end_mark
        return yaml.ScalarToken(value, True, token.start_mark, end)


@dataclass
class Positions:
    """Where each value (and each mapping key) of the document stands, 1-based."""

    file: str
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def issue(self, loc: Loc, message: str, at_key: bool = False) -> ConfigIssue:
        probe = loc
        while True:
            table = (self.keys, self.values) if at_key else (self.values, self.keys)
            for positions in table:
                if probe in positions:
                    line, col = positions[probe]
                    return ConfigIssue(self.file, line, col, message)
            if not probe:
                return ConfigIssue(self.file, 1, 1, message)
            probe = probe[:-1]


@dataclass
class LoadedConfig:
    config: GatewayConfig
    positions: Positions
    path: Path
    digest: str


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.issues: list[ConfigIssue] = []
        self.merged: dict[int, int] = {}  # id(mapping node): pairs its merge keys put first

    def walk(self, node: yaml.Node, loc: Loc) -> Any:
        self.positions.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            # YAML merge keys (`<<: *anchor`): the merged pairs come first, from where
            # the anchor stands; the mapping's own keys may override them.
            merged = self.merged.get(id(node), 0)  # an alias walks a node twice
            if any(k.tag == _MERGE_TAG for k, _ in node.value):
                own = sum(k.tag != _MERGE_TAG for k, _ in node.value)
                self.loader.flatten_mapping(node)
                merged = self.merged[id(node)] = len(node.value) - own
            out: dict[Any, Any] = {}
            written: set[Any] = set()  # keys written in this mapping itself
            for index, (key_node, value_node) in enumerate(node.value):
                key = self.loader.construct_object(key_node)
                if not isinstance(key, str | int):
                    self.issues.append(self.positions.issue(loc, "mapping keys must be strings"))
                    continue
                child = (*loc, key)
                self.positions.keys[child] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                if index >= merged:
                    if key in written:
                        self.issues.append(
                            self.positions.issue(child, f"duplicate key {key!r}", at_key=True)
                        )
                    written.add(key)
                out[key] = self.walk(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*loc, i)) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node)
        if isinstance(value, str) and "${" in value:
            value = self._substitute(value, loc)
        return value

    def _substitute(self, text: str, loc: Loc) -> str:
        def replace(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if not value:  # as in the shell, `${X:-d}` applies d when X is unset or empty
                if m.group(2) is not None:
                    return m.group(2)
                if value is None:
                    self.issues.append(
                        self.positions.issue(loc, f"environment variable {m.group(1)} is not set")
                    )
                return ""
            return value

        return _ENV.sub(replace, text)


def parse_yaml(text: str, file: str) -> tuple[Any, Positions, list[ConfigIssue]]:
    positions = Positions(file)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, positions, [ConfigIssue(file, 1, 1, "the file is empty")]
            walker = _Walker(loader, positions)
            data = walker.walk(node, ())
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, positions, [ConfigIssue(file, line, col, f"invalid YAML: {exc.problem}")]
    except yaml.YAMLError as exc:
        return None, positions, [ConfigIssue(file, 1, 1, f"invalid YAML: {exc}")]
    return data, positions, walker.issues


def _message(error: Any, loc: Loc, model_fields: dict[Loc, list[str]]) -> tuple[str, bool]:
    kind = error["type"]
    where = format_loc(loc)
    if kind == "extra_forbidden":
        parent = loc[:-1]
        known = model_fields.get(parent)
        hint = f"; expected one of: {', '.join(known)}" if known else ""
        owner = format_loc(parent) or "file"
        return f"{owner}: unknown key {loc[-1]!r}{hint}", True
    if kind == "missing":
        return f"{format_loc(loc[:-1]) or 'file'}: missing required key {loc[-1]!r}", True
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind.startswith("literal_error") or kind == "enum":
        msg = msg.replace("Input should be", "expected")
    return (f"{where}: {msg}" if where else msg), False


def validation_issues(
    exc: ValidationError, positions: Positions, base: Loc = (), fields_hint: Any = None
) -> list[ConfigIssue]:
    issues = []
    hints = fields_hint or {}
    for error in exc.errors():
        loc = (*base, *(p for p in error["loc"] if not _is_tag(p)))
        message, at_key = _message(error, loc, hints)
        issues.append(positions.issue(loc, message, at_key=at_key))
    return issues


def _is_tag(part: Any) -> bool:
    # pydantic adds union/function tags to locations ("function-before[...]", "str", ...).
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "list"))


def _known_fields(data: Any) -> dict[Loc, list[str]]:
    """For unknown-key hints: the valid keys of each mapping that pydantic checks."""
    from gateway.config import models as m

    hints: dict[Loc, list[str]] = {(): list(m.GatewayConfig.model_fields)}
    for key, model in (("limits", m.Limits), ("shutdown", m.Shutdown), ("logging", m.Logging),
                       ("reload", m.Reload)):  # fmt: skip
        hints[(key,)] = list(model.model_fields)
    if isinstance(data, dict):
        for name in data.get("upstreams") or {}:
            hints[("upstreams", name)] = list(m.Upstream.model_fields)
            hints[("upstreams", name, "timeouts")] = list(m.Timeouts.model_fields)
            hints[("upstreams", name, "pool")] = list(m.Pool.model_fields)
        for name in data.get("stores") or {}:
            hints[("stores", name)] = list(m.StoreSpec.model_fields)
        routes = data.get("routes")
        for i in range(len(routes) if isinstance(routes, list) else 0):
            hints[("routes", i)] = list(m.Route.model_fields)
            hints[("routes", i, "match")] = list(m.Match.model_fields)
    return hints


def _validate_policies(data: Any, positions: Positions) -> list[ConfigIssue]:
    """Validate each route's ``policies`` entries through the registry, in place."""
    from gateway.policies import REGISTRY

    issues: list[ConfigIssue] = []
    routes = data.get("routes") if isinstance(data, dict) else None
    if not isinstance(routes, list):
        return issues
    for i, route in enumerate(routes):
        if not isinstance(route, dict) or "policies" not in route:
            continue
        policies = route["policies"]
        loc: Loc = ("routes", i, "policies")
        if policies is None:
            route["policies"] = {}
            continue
        if not isinstance(policies, dict):
            issues.append(positions.issue(loc, f"{format_loc(loc)}: expected a mapping"))
            continue
        for name, raw in list(policies.items()):
            if name not in REGISTRY:
                issues.append(
                    positions.issue(
                        (*loc, name),
                        f"{format_loc(loc)}: unknown policy {name!r}; "
                        f"expected one of: {', '.join(sorted(REGISTRY))}",
                        at_key=True,
                    )
                )
                continue
            model = REGISTRY[name].config_model
            try:
                policies[name] = model.model_validate({} if raw is None else raw)
            except ValidationError as exc:
                hint = {(*loc, name): list(getattr(model, "model_fields", {}))}
                issues.extend(validation_issues(exc, positions, (*loc, name), hint))
    return issues


def _check_references(data: Any, positions: Positions) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if not isinstance(data, dict):
        return issues
    upstreams = data.get("upstreams")
    known = set(upstreams) if isinstance(upstreams, dict) else set()
    seen: set[str] = set()
    routes = data.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, dict):
            continue
        name, upstream = route.get("name"), route.get("upstream")
        if isinstance(name, str):
            if name in seen:
                issues.append(
                    positions.issue(("routes", i, "name"), f"route name {name!r} is used twice")
                )
            seen.add(name)
        if isinstance(upstream, str) and upstream not in known:
            have = ", ".join(sorted(known)) or "none"
            issues.append(
                positions.issue(
                    ("routes", i, "upstream"),
                    f"routes[{i}].upstream: {upstream!r} is not in `upstreams` (have: {have})",
                )
            )
    return issues


def digest_of(text: str) -> str:
    """The short content hash of a policy file (``gateway_config_info``, reloads)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_text(text: str, file: str = "<config>") -> tuple[GatewayConfig, Positions]:
    try:
        return _load_text(text, file)
    except ConfigError as exc:
        exc.digest = digest_of(text)
        raise


def _load_text(text: str, file: str) -> tuple[GatewayConfig, Positions]:
    data, positions, issues = parse_yaml(text, file)
    if data is None and not issues:
        issues = [ConfigIssue(file, 1, 1, "the file is empty")]
    if issues:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, 1, "the file must be a mapping of keys")])
    issues = _validate_policies(data, positions) + _check_references(data, positions)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, positions, (), _known_fields(data)))
        config = None
    if issues:
        raise ConfigError(_unique(issues))
    assert config is not None
    return config, positions


def _unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[ConfigIssue] = set()
    out = []
    for issue in sorted(issues, key=lambda i: (i.line, i.col)):
        if issue not in seen:
            seen.add(issue)
            out.append(issue)
    return out


def load_file(path: str | Path) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), 1, 1, f"cannot read the file: {exc}")]) from exc
    config, positions = load_text(text, str(path))
    return LoadedConfig(config, positions, path, digest_of(text))
