"""YAML -> plain Python data, able to say where every value came from.

PyYAML's composer (the C one, via ``CSafeLoader``) gives nodes with marks; we walk them ourselves rather than
using a constructor, so that duplicate keys are caught, ``${env:NAME}`` is substituted, alias expansion is
bounded (a "billion laughs" file is refused in linear time, not expanded) and positions stay available:
``Source.where(path)`` finds a value's line and column from the node tree only when a message needs it, which
keeps large valid plans fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

try:  # the C loader is ~10x faster on large plans
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

Path_ = tuple  # a path into the document: ("products", "pro", "rate_limit", "burst")

MAX_NODES = 1_000_000  # values in the document after alias expansion (~1 KB of memory each while loading)
MAX_ALIAS_VALUES = 200_000  # values contributed by aliases (a legitimate plan repeats small blocks)
MAX_DEPTH = 32  # a plan's deepest field is products.ID.pricing.tiers[N].up_to (5 levels)
# Numbers are bounded on their text, before any conversion: Python refuses int() of more than 4,300 digits,
# and expanding `1.0e+999999999` for a message took a minute and 6 GB. Counts go up to 2**63 - 1 (19 digits)
# and money is a quoted decimal, so no legitimate plan comes near either bound.
MAX_NUMBER_CHARS = 40
MAX_FLOAT_EXPONENT = 308  # beyond it a float is inf or 0 (IEEE 754 doubles)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = {
    _STR,
    _INT,
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    _MERGE,
    _SEQ,
    _MAP,
}

_ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_ANY_RE = re.compile(r"\$\{env:([^}]*)\}")
_DECIMAL_INT_RE = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_EXPONENT_RE = re.compile(r"[eE]([-+]?[0-9]+)")
_NUMBER_TAGS = {_INT, "tag:yaml.org,2002:float"}

_scalar_constructor = yaml.constructor.SafeConstructor()
_RESOLVER = yaml.resolver.Resolver()  # what a plain value's tag would be without an explicit tag


def _first_chars_needing_resolution() -> frozenset:
    chars = set()
    for first in yaml.resolver.Resolver.yaml_implicit_resolvers:
        if first is not None:
            chars.add(first)
    return frozenset(chars)


_RESOLVE_FIRST = _first_chars_needing_resolution()
_base_resolve = _BaseLoader.resolve


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader, with a fast path for the common case: a plain scalar that can only be a string."""

    def resolve(self, kind, value, implicit):  # called by the composer for every node
        if kind is ScalarNode:
            if implicit[0] and value and value[0] not in _RESOLVE_FIRST:
                return _STR
            return _base_resolve(self, kind, value, implicit)
        return _SEQ if kind is SequenceNode else _MAP

    def descend_resolver(self, current_node, current_index):  # no path resolvers: nothing to track
        pass

    def ascend_resolver(self):
        pass


@dataclass
class Source:
    """A parsed plan file: data, plus the node tree to find the position of any value in it."""

    file: str
    data: object
    root: yaml.Node | None = None
    secrets: set[str] = field(default_factory=set)  # values substituted from the environment
    secret_paths: set[tuple] = field(default_factory=set)  # where they were substituted
    _index: dict = field(default_factory=dict, repr=False)  # id(mapping) -> ({key: (key, value)}, merges)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at ``path`` (of its key with ``key=True``). For a path that
        is not in the file (a missing field, a default), the key of its nearest ancestor that is."""
        node = self.root
        if node is None:
            return (1, 1)
        key_node: yaml.Node | None = None
        for part in path:
            found = self._child(node, part)
            if found is None:
                return _pos(key_node if key_node is not None else node)
            key_node, node = found
        return _pos(key_node if (key and key_node is not None) else node)

    def release(self) -> None:
        """Drop the node tree once no more positions are needed; ``where`` then answers (1, 1)."""
        self.root = None
        self._index.clear()

    def _child(self, node: yaml.Node, part) -> tuple[yaml.Node | None, yaml.Node] | None:
        if isinstance(node, SequenceNode):
            if isinstance(part, int) and 0 <= part < len(node.value):
                return None, node.value[part]
            return None
        if not isinstance(node, MappingNode):
            return None
        index = self._index.get(id(node))
        if index is None:
            index = {}
            merges = []
            for k, v in node.value:
                if k.tag == _MERGE:
                    merges.append(v)
                elif isinstance(k, ScalarNode):
                    index.setdefault(k.value, (k, v))
            self._index[id(node)] = index = (index, merges)
        explicit, merges = index
        if str(part) in explicit:
            return explicit[str(part)]
        for m in merges:  # "<<: *defaults": explicit keys win, then the merged mappings in order
            for s in m.value if isinstance(m, SequenceNode) else [m]:
                found = self._child(s, part)
                if found is not None:
                    return found
        return None


class YamlFloat(float):
    """A float that remembers how it was written, so "quote it" hints show `29.00`, not `29.0`."""

    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        self = super().__new__(cls, value)
        self.text = text
        return self


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


def _kind_of_node(node: yaml.Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"


class _Walker:
    def __init__(self, src: Source, env: dict[str, str]):
        self.src = src
        self.env = env
        self.count = 0  # values so far, aliases counted at their full size
        self.alias_values = 0
        self.env_problems: list[EnvProblem] = []
        self.done: dict[int, tuple[object, int]] = {}  # id(container node) -> (value, expanded size)
        self.active: set[int] = set()  # containers being walked (an alias to one of them is a cycle)

    def walk(self, node: yaml.Node, path: Path_, depth: int = 0) -> object:
        if isinstance(node, ScalarNode):
            self.count += 1
            return self.scalar(node, path)
        key = id(node)
        hit = self.done.get(key)
        if hit is not None:  # an alias: reuse the value built at the anchor, count its full size
            value, size = hit
            self.count += size
            self.alias_values += size
            if self.alias_values > MAX_ALIAS_VALUES or self.count > MAX_NODES:
                line, col = _pos(node)
                raise YamlProblem(
                    line,
                    col,
                    f"aliases expand the document to more than "
                    f"{min(MAX_ALIAS_VALUES, MAX_NODES):,} values, refusing to expand it "
                    '(a "billion laughs" document?); use anchors for small shared blocks only',
                    path,
                )
            return value
        if key in self.active:
            line, col = _pos(node)
            raise YamlProblem(
                line,
                col,
                "an alias refers to a mapping or list that contains it (a recursive "
                "structure); aliases may only repeat a finished block",
                path,
            )
        if depth >= MAX_DEPTH:
            line, col = _pos(node)
            raise YamlProblem(
                line,
                col,
                f"nested more than {MAX_DEPTH} levels deep; plan fields are at most "
                "5 levels deep (products.ID.pricing.tiers[N].up_to)",
                path[:6],
            )
        if node.tag not in ("!", _SEQ if isinstance(node, SequenceNode) else _MAP):  # `!!python/object [..]`
            self.bad_tag(node, path)
        before = self.count
        self.count += 1
        self.active.add(key)
        if isinstance(node, SequenceNode):
            value: object = [self.walk(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        else:
            value = self.mapping(node, path, depth)
        self.active.discard(key)
        if self.count > MAX_NODES:
            line, col = _pos(node)
            raise YamlProblem(
                line,
                col,
                f"the document holds more than {MAX_NODES:,} values; split the plan into several files",
                path[:6],
            )
        self.done[key] = (value, self.count - before)
        return value

    def mapping(self, node: MappingNode, path: Path_, depth: int) -> dict:
        out: dict = {}
        merged: list[yaml.Node] = []
        first_at: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                line, col = _pos(key_node)
                raise YamlProblem(
                    line, col, f"keys must be plain strings; got {_kind_of_node(key_node)} as a key", path
                )
            if key_node.tag not in _PLAIN_TAGS and key_node.tag != "!":
                self.bad_tag(key_node, path)
            key = key_node.value  # as written: `42:` and `yes:` are the ids "42" and "yes"
            if key in first_at:
                line, col = _pos(key_node)
                fl, fc = _pos(first_at[key])
                raise YamlProblem(
                    line,
                    col,
                    f"duplicate key {key!r}: already defined at line {fl}, column {fc}; give each key once",
                    path + (key,),
                )
            first_at[key] = key_node
            if value_node.__class__ is ScalarNode and value_node.tag == _STR and "${" not in value_node.value:
                self.count += 1  # the common case, inline: a plain string
                out[key] = value_node.value
            else:
                out[key] = self.walk(value_node, path + (key,), depth + 1)
        for value_node in merged:  # "<<: *defaults" — explicit keys win, then earlier merges
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for s in sources:
                if not isinstance(s, MappingNode):
                    line, col = _pos(s)
                    raise YamlProblem(
                        line,
                        col,
                        f"'<<' merges mappings: `<<: *anchor` or `<<: [*a, *b]` naming "
                        f"anchored mappings; got {_kind_of_node(s)}",
                        path + ("<<",),
                    )
                merged_value = self.walk(s, path, depth + 1)
                for k, v in merged_value.items():  # type: ignore[union-attr]
                    out.setdefault(k, v)
        return out

    def scalar(self, node: ScalarNode, path: Path_) -> object:
        tag = node.tag
        if tag == _STR or node.style:  # quoted or block scalars are strings whatever the tag says
            if tag not in _PLAIN_TAGS and tag != "!":
                self.bad_tag(node, path)
            value = node.value
            if "${" in value:
                value = self.substitute(value, node, path)
            return value
        if tag in _NUMBER_TAGS:
            self.check_number(node, path)
        if tag == _INT and _DECIMAL_INT_RE.fullmatch(node.value):
            return int(node.value)
        if tag not in _PLAIN_TAGS:
            self.bad_tag(node, path)
        try:
            value = _scalar_constructor.construct_object(node)
        # PyYAML's constructors fail on explicit tags with the wrong text: `!!bool x` (KeyError), `!!int`
        # with no value (IndexError), `!!timestamp x` (AttributeError), `!!float ''` ...
        except (yaml.YAMLError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            line, col = _pos(node)
            kind = tag.rsplit(":", 1)[-1]
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            if not node.style and _RESOLVER.resolve(ScalarNode, node.value, (True, False)) == tag:
                hint = "quote it to make it a string"  # the plain value looked like a {kind} (2026-13-45)
            else:
                hint = f"remove the tag !!{kind} (plain values need none), or quote the value to make it a string"
            raise YamlProblem(line, col, f"cannot read the value {shown!r} as {kind}; {hint}", path) from None
        if isinstance(value, float):
            return YamlFloat(value, node.value)
        if isinstance(value, (str, int, bool)) or value is None:
            return value
        return node.value  # dates and timestamps: keep the text as written

    def check_number(self, node: ScalarNode, path: Path_) -> None:
        """Bound a number on its text, before anything converts it."""
        text = node.value
        line, col = _pos(node)
        if len(text) > MAX_NUMBER_CHARS:
            raise YamlProblem(
                line,
                col,
                f"a number of {len(text):,} characters ({text[:12]}...); numbers in a plan are at most "
                f"{MAX_NUMBER_CHARS} characters (counts go up to {2**63 - 1:,}; money is a quoted decimal)",
                path,
            )
        if node.tag != _INT:
            m = _EXPONENT_RE.search(text)
            if m and abs(int(m.group(1))) > MAX_FLOAT_EXPONENT:
                raise YamlProblem(
                    line,
                    col,
                    f"the number {text} is out of range (exponent {m.group(1)}); numbers in a plan have an "
                    f"exponent of at most {MAX_FLOAT_EXPONENT} (money is a quoted decimal like \"29.00\")",
                    path,
                )

    def bad_tag(self, node: yaml.Node, path: Path_) -> None:
        line, col = _pos(node)
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise YamlProblem(
            line,
            col,
            f"unsupported YAML tag {tag}; plan values are plain strings, numbers, "
            "booleans, lists and mappings (remove the tag)",
            path,
        )

    def substitute(self, value: str, node: yaml.Node, path: Path_) -> str:
        line, col = _pos(node)
        for m in _ENV_ANY_RE.finditer(value):
            if not _ENV_RE.fullmatch(m.group(0)):
                self.env_problems.append(
                    EnvProblem(
                        path,
                        line,
                        col,
                        m.group(1),
                        f"invalid environment reference {m.group(0)!r}; write "
                        "${env:NAME} with NAME of letters, digits and _, "
                        "not starting with a digit",
                    )
                )

        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in self.env:
                self.env_problems.append(
                    EnvProblem(
                        path,
                        line,
                        col,
                        name,
                        f"environment variable {name} is not set; set it before "
                        f"running apimon (the plan reads ${{env:{name}}})",
                    )
                )
                return ""
            val = self.env[name]
            if val:
                self.src.secrets.add(val)
                self.src.secret_paths.add(path)
            return val

        return _ENV_RE.sub(repl, value)


def _syntax_message(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = (exc.problem or "invalid YAML").strip()
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    char = here[col - 1] if 0 < col <= len(here) else ""
    if "tab" in problem or (char == "\t" and "cannot start any token" in problem):
        return (
            line,
            col,
            "invalid YAML: a tab character in indentation; indent with spaces (YAML forbids tabs)",
        )
    if "undefined alias" in problem:
        name = re.match(r"\*([^\s,\]\}]+)", here[col - 1 :]) if here else None
        alias = f"*{name.group(1)}" if name else "the alias"
        anchor = f"&{name.group(1)}" if name else "its anchor"
        return (
            line,
            col,
            (f"invalid YAML: {alias} is not defined; define the anchor ({anchor}) earlier in the same file"),
        )
    if "expected a single document" in problem or "but found another document" in problem:
        return (
            line,
            col,
            (
                "invalid YAML: a second document (---) in one file; a plan file holds one document "
                "(split it into several files)"
            ),
        )
    if "cannot start any token" in problem and char:
        return (
            line,
            col,
            (f'invalid YAML: a value cannot start with {char!r}; quote the value (e.g. "{here[col - 1 :].strip()}")'),
        )
    if ("mapping values are not allowed" in problem or "could not find expected ':'" in problem) and (
        len(here.lstrip()) > 1024
    ):
        return (
            line,
            col,
            "invalid YAML: a key longer than 1,024 characters (YAML's limit for a key); "
            "ids are at most 63 characters",
        )
    if "maximum nesting depth" in problem:
        return (
            line,
            col,
            (f"invalid YAML: nested too deeply; plan fields are at most 5 levels deep (the limit is {MAX_DEPTH})"),
        )
    if exc.context and exc.context_mark and exc.context_mark is not mark:
        cm = exc.context_mark
        context = f"{exc.context} started at line {cm.line + 1}, column {cm.column + 1}"
        return line, col, f"invalid YAML: {problem} ({context}); check brackets, quotes and indentation"
    return line, col, f"invalid YAML: {problem}; check brackets, quotes and indentation"


def _rough_node_bound(text: str) -> int:
    """More than the number of YAML nodes in ``text`` (each follows one of these characters), in milliseconds."""
    return sum(text.count(c) for c in ",[{:-\n?") + 1


def _count_nodes(text: str) -> None:
    """Count the nodes from the event stream (constant memory); YamlProblem if there are more than MAX_NODES."""
    loader = _Loader(text)
    count = 0
    try:
        while (event := loader.get_event()) is not None:
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                count += 1
                if count > MAX_NODES:
                    m = event.start_mark
                    raise YamlProblem(
                        m.line + 1,
                        m.column + 1,
                        f"the document holds more than {MAX_NODES:,} YAML nodes (keys and values); "
                        "split the plan into several files",
                    )
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str, env: dict[str, str]) -> tuple[Source, list[EnvProblem]]:
    """Parse one YAML document. Raises YamlProblem for syntax errors and unsafe documents."""
    src = Source(file=file, data=None)
    try:
        if _rough_node_bound(text) > MAX_NODES:
            _count_nodes(text)  # refuse a huge document before its node tree takes gigabytes of memory
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(*_syntax_message(exc, text)) from None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, position) + 1
        col = position - (text.rfind("\n", 0, position) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise YamlProblem(
            line,
            col,
            f"invalid YAML: control character U+{ord(char):04X} is not allowed; plan files are printable UTF-8 text",
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, "invalid YAML: " + " ".join(str(exc).split())) from None
    except RecursionError:  # pragma: no cover - libyaml stops at 1000 levels first
        raise YamlProblem(1, 1, "invalid YAML: nested too deeply") from None
    if node is None:
        return src, []
    src.root = node
    walker = _Walker(src, env)
    src.data = walker.walk(node, ())
    return src, walker.env_problems
