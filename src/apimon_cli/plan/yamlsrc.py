"""YAML -> plain Python data, remembering where every value came from.

PyYAML's composer gives nodes with marks; we walk them ourselves (rather than using a constructor) so that
each value's file position is kept in a side table keyed by its path, duplicate keys are caught, and alias
expansion is bounded (a "billion laughs" file is refused, not expanded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

try:  # the C loader is ~10x faster on large plans
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Path_ = tuple  # a path into the document: ("products", "pro", "rate_limit", "burst")

MAX_NODES = 2_000_000  # after alias expansion
MAX_DEPTH = 64

_ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_ANY_RE = re.compile(r"\$\{env:([^}]*)\}")

_scalar_constructor = yaml.constructor.SafeConstructor()


@dataclass
class Source:
    """A parsed plan file: data plus the position of every node."""

    file: str
    data: object
    # path -> (line, col) of the value; keys_at: path -> (line, col) of the mapping key
    values_at: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys_at: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)  # values substituted from the environment

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Best known position for a path: the key or value itself, else its nearest ancestor."""
        table = self.keys_at if key else self.values_at
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values_at:
                return self.values_at[p]
            p = p[:-1]
        return self.values_at.get((), (1, 1))


class YamlProblem(Exception):
    def __init__(self, line: int, col: int, message: str, path: Path_ = ()):
        super().__init__(message)
        self.line, self.col, self.message, self.path = line, col, message, path


@dataclass
class EnvProblem:
    path: Path_
    line: int
    col: int
    name: str
    message: str


def _pos(node: yaml.Node) -> tuple[int, int]:
    m = node.start_mark
    return (m.line + 1, m.column + 1)


class _Walker:
    def __init__(self, src: Source, env: dict[str, str]):
        self.src = src
        self.env = env
        self.count = 0
        self.env_problems: list[EnvProblem] = []

    def walk(self, node: yaml.Node, path: Path_, depth: int = 0) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            line, col = _pos(node)
            raise YamlProblem(line, col, f"document expands to more than {MAX_NODES:,} values "
                              "(aliases repeated too often); refusing to expand it", path)
        if depth > MAX_DEPTH:
            line, col = _pos(node)
            raise YamlProblem(line, col, f"nested more than {MAX_DEPTH} levels deep", path)
        self.src.values_at.setdefault(path, _pos(node))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        line, col = _pos(node)  # pragma: no cover - composer yields only the three kinds
        raise YamlProblem(line, col, "unsupported YAML node", path)

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict:
        out: dict = {}
        explicit: set = set()
        merged: list[tuple[yaml.Node, Path_]] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.append((value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = _pos(key_node)
                raise YamlProblem(line, col, "mapping keys must be plain scalars", path)
            key = _scalar_constructor.construct_object(key_node)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                key = key_node.value
            if key in explicit:
                line, col = _pos(key_node)
                first = self.src.keys_at.get(path + (key,), (0, 0))
                raise YamlProblem(line, col, f"duplicate key {key!r} (first defined at line {first[0]})",
                                  path + (key,))
            explicit.add(key)
            self.src.keys_at[path + (key,)] = _pos(key_node)
            out[key] = self.walk(value_node, path + (key,), depth + 1)
        for value_node, p in merged:  # "<<: *defaults" — explicit keys win
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for s in sources:
                if not isinstance(s, yaml.MappingNode):
                    line, col = _pos(s)
                    raise YamlProblem(line, col, "'<<' merge needs a mapping or a list of mappings", p)
                for k, v in self.mapping(s, p, depth + 1).items():
                    out.setdefault(k, v)
        return out

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> object:
        if node.tag == "tag:yaml.org,2002:str" or node.style in ("'", '"', "|", ">"):
            value = node.value
            if "${" in value:
                value = self.substitute(value, node, path)
            return value
        try:
            value = _scalar_constructor.construct_object(node)
        except yaml.YAMLError as exc:
            line, col = _pos(node)
            raise YamlProblem(line, col, f"invalid scalar {node.value!r}: {exc}", path) from None
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return node.value  # dates, timestamps, binary: keep the text as written

    def substitute(self, value: str, node: yaml.Node, path: Path_) -> str:
        line, col = _pos(node)
        for m in _ENV_ANY_RE.finditer(value):
            if not _ENV_RE.fullmatch(m.group(0)):
                self.env_problems.append(EnvProblem(path, line, col, m.group(1),
                                                    f"invalid environment reference {m.group(0)!r}; "
                                                    "use ${env:NAME} with NAME of letters, digits, _"))

        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in self.env:
                self.env_problems.append(EnvProblem(path, line, col, name,
                                                    f"environment variable {name} is not set"))
                return ""
            val = self.env[name]
            if val:
                self.src.secrets.add(val)
            return val

        return _ENV_RE.sub(repl, value)


def parse_yaml(text: str, file: str, env: dict[str, str]) -> tuple[Source, list[EnvProblem]]:
    """Parse one YAML document. Raises YamlProblem for syntax errors and unsafe documents."""
    src = Source(file=file, data=None)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}: {problem}" if "found" in problem else problem
        raise YamlProblem(line, col, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlProblem(1, 1, f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    if node is None:
        return src, []
    walker = _Walker(src, env)
    try:
        src.data = walker.walk(node, ())
    except RecursionError:
        raise YamlProblem(1, 1, f"nested more than {MAX_DEPTH} levels deep") from None
    return src, walker.env_problems
