"""The one way the project reads YAML (cluster specs, LOCAL_XDS_PATH, the CA's workloads, settings files): bounded,
and every problem a `YamlError` with the line to fix.

Bounds, so a hostile or broken file costs little and never raises something else: its size (`MAX_BYTES`), strict
UTF-8, nesting depth (`MAX_DEPTH`, checked while composing, long before Python's recursion limit), and the values it
expands to through aliases (`MAX_VALUES`: "billion laughs"), an alias inside its own anchor (a cycle) refused. A
value the loader cannot construct (`!!int abc`, an unknown tag) is an error at its line too. Callers put the file
name in front: `FILE:LINE: what is wrong`.

Speed: libyaml (PyYAML's C extension, in its wheels) scans and parses; PyYAML's own composer builds the node graph
from libyaml's events, because libyaml's composer recurses in C without a bound (deep nesting crashes the process)
while the Python one is where the depth is counted. That is about three times faster than PyYAML's pure-Python reader,
scanner and parser (a 10 000-workload LOCAL_XDS_PATH file: ~12 s → ~4 s), with the same bounds and error lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import BaseConstructor
from yaml.reader import Reader
from yaml.resolver import BaseResolver

_CParser: type | None
try:
    from yaml._yaml import CParser as _CParser  # libyaml, in PyYAML's wheels
except ImportError:  # PyYAML built without it: its pure-Python parser, three times slower
    _CParser = None

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 1_000_000  # nodes of the document once every alias is expanded
_STANDARD_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _STANDARD_TAG + "merge"

Loader = type[yaml.SafeLoader]
Where = tuple[str | int, ...]  # a path of keys and indices, as pydantic reports error locations


class YamlError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def read_bytes(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes; YamlError if it is larger than `limit`. OSError as open/read raise it."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise YamlError(1, f"larger than {f'{limit >> 20} MiB' if limit % (1 << 20) == 0 else f'{limit} bytes'}")
    return data


def decode(data: bytes) -> str:
    """Strict UTF-8 (a BOM is allowed); YamlError naming the line of the first byte that is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlError(line, f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    return decode(read_bytes(path, limit))


def compose(text: str, loader: Loader = yaml.SafeLoader) -> yaml.Node | None:
    """The document's node graph, checked against every bound."""
    instance: Any = None  # a `Bounded` loader (made at run time from `loader`)
    try:
        instance = _bounded(loader)(text)  # the reader refuses characters YAML does not allow right here
        node: yaml.Node | None = instance.get_single_node()
        anchored = instance.anchored
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(mark.line + 1 if mark is not None else 1, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:  # NUL and other control characters
        # libyaml reports a byte offset and no character: find the first character YAML refuses ourselves
        found = Reader.NON_PRINTABLE.search(text)
        position = found.start() if found is not None else exc.position
        char = ord(text[position]) if position < len(text) else 0
        line = text.count("\n", 0, position) + 1
        raise YamlError(line, f"not valid YAML: character #x{char:04x} is not allowed") from None
    except yaml.YAMLError as exc:
        raise YamlError(1, f"not valid YAML: {exc}") from None
    finally:
        if instance is not None:
            instance.dispose()
    if node is not None and anchored:  # a tree is as big as its text (MAX_BYTES) and as deep as composed
        _check_expansion(node)
    return node


def load(text: str, loader: Loader = yaml.SafeLoader) -> Any:
    """The document's value, as `yaml.load(text, Loader=loader)` gives it, within the bounds."""
    node = compose(text, loader)
    if node is None:
        return None
    constructor = _bounded(loader)("")
    try:
        return _construct(node, constructor)
    finally:
        constructor.dispose()


def load_with_lines(text: str, loader: Loader = yaml.SafeLoader) -> tuple[Any, dict[Where, int]]:
    """(value, {path: 1-based line}) of one document, the line of every mapping key and sequence item under its path.
    Stricter than `load`: duplicate keys, merge keys (<<) and keys that are not scalars are errors."""
    node = compose(text, loader)
    lines: dict[Where, int] = {}
    if node is None:
        return None, lines
    lines[()] = node.start_mark.line + 1
    constructor = _bounded(loader)("")
    try:
        return _build(node, (), lines, constructor), lines
    finally:
        constructor.dispose()


def line_of(lines: dict[Where, int], loc: Where) -> int:
    """The line of the longest known prefix of `loc` (a missing field is reported at its parent mapping)."""
    for end in range(len(loc), -1, -1):
        found = lines.get(tuple(loc[:end]))
        if found is not None:
            return found
    return 1


def dotted(loc: Where) -> str:
    """`deployments[1].replicas` for ('deployments', 1, 'replicas')."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


# ----- the bounds -------------------------------------------------------------------------------------------------


_BOUNDED: dict[Loader, Loader] = {}


def _bounded(loader: Loader) -> Loader:
    made = _BOUNDED.get(loader)
    if made is not None:
        return made

    class Bounded(loader):  # type: ignore[misc,valid-type]
        """Counts nesting while composing (PyYAML's composer recurses once, three frames, per level) and remembers
        the node being constructed (so a value its constructor refuses is reported at its own line)."""

        depth = 0
        constructing: yaml.Node | None = None
        anchored = False  # the document defines an anchor: only then can an alias make it a graph, not a tree

        def compose_document(self) -> Any:
            anchors = self.anchors  # the composer fills this one and then starts a new one for the next document
            node = super().compose_document()
            self.anchored = self.anchored or bool(anchors)
            return node

        def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
            self.constructing = node
            return super().construct_object(node, deep)

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise YamlError(mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    if _CParser is None:
        _BOUNDED[loader] = Bounded
        return Bounded

    class Fast(_CParser, Bounded):  # type: ignore[misc,valid-type]
        """libyaml's events, the bounded Python composer above them (CParser's own node methods step aside)."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)  # type: ignore[misc]
            Composer.__init__(self)
            BaseConstructor.__init__(self)
            BaseResolver.__init__(self)

        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

    _BOUNDED[loader] = Fast
    return Fast


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """What the graph expands to (an alias is the anchored node again): no cycle, at most MAX_VALUES nodes and
    MAX_DEPTH levels. Iterative, each node measured once, so a billion laughs costs as little as it is long."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_VALUES:
                raise YamlError(node.start_mark.line + 1, f"expands to more than {MAX_VALUES} values (aliases)")
            if depth[key] > MAX_DEPTH:
                raise YamlError(node.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels (aliases)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlError(node.start_mark.line + 1, "an alias inside its own anchor (a recursive structure)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


def _construct(node: yaml.Node, constructor: yaml.SafeLoader, scalar: bool = False) -> Any:
    """The node's value through the loader's constructors; what they refuse (or raise) is an error at its line. A
    scalar has nothing nested to finish: `construct_document`'s bookkeeping is skipped (a third of a big file's
    load)."""
    try:
        return constructor.construct_object(node) if scalar else constructor.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark or node.start_mark
        raise YamlError(mark.line + 1, f"{exc.problem or exc}") from None
    except Exception as exc:  # e.g. `!!int abc` (ValueError), a 5000-digit integer
        failed = getattr(constructor, "constructing", None) or node
        raise YamlError(failed.start_mark.line + 1, f"cannot read the value {failed.tag}: {exc}") from None


def _build(node: yaml.Node, path: Where, lines: dict[Where, int], constructor: yaml.SafeLoader) -> Any:
    if not node.tag.startswith(_STANDARD_TAG):  # the loader's own tags (`!Exact …`) are its constructors' business
        return _construct(node, constructor)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                raise YamlError(line, "merge keys (<<) are not supported")
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(line, "mapping keys must be scalars")
            key = _construct(key_node, constructor, scalar=True)
            if key in out:
                raise YamlError(line, f"duplicate key {key!r}")
            child = (*path, key)
            lines[child] = line
            out[key] = _build(value_node, child, lines, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            items.append(_build(item, child, lines, constructor))
        return items
    return _construct(node, constructor, scalar=isinstance(node, yaml.ScalarNode))
