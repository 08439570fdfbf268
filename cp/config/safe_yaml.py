"""A YAML loader for untrusted files: no duplicate keys, bounded alias expansion and depth.

PyYAML shares one object per anchor, so an alias amplifier ("billion laughs") costs little to
load but explodes in everything that walks the result (validation, JSON, pushes). The composer
here counts every node as it would be once aliases are expanded and stops at the first one past
a limit, before anything is constructed. Only JSON types come out: str, int, float, bool, None,
lists and mappings; dates stay text. Events come from libyaml when PyYAML has it (six times
faster than the pure-Python parser); composing and constructing stay in Python, where they are
checked, whichever parser feeds them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from cp.config.errors import ConfigError, shown
from cp.config.limits import ConfigLimits

MERGE_TAG = "tag:yaml.org,2002:merge"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
#: tags SafeLoader knows whose values are not JSON (bytes, dates, sets, ordered pairs)
UNSUPPORTED_TAGS = ("binary", "timestamp", "set", "omap", "pairs")
SURROGATE = re.compile("[\ud800-\udfff]")


class LimitExceeded(yaml.MarkedYAMLError):
    """The document is bigger or deeper than a limit allows (reported as it is, one line)."""


class DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names one key twice."""


class BoundedComposer(Composer, SafeConstructor, Resolver):
    """Composing and constructing that refuse duplicate keys and count aliases as what they stand for.

    Events come from the parser a subclass mixes in after it.
    """

    if TYPE_CHECKING:  # provided by the parser of the concrete loader

        def check_event(self, *choices: Any) -> bool: ...
        def peek_event(self) -> Any: ...
        def dispose(self) -> None: ...

    def __init__(self, *, limits: ConfigLimits) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.limits = limits
        self.expanded_nodes = 0
        self.expanded_text = 0
        self.depth = 0
        self.deepest = 0
        #: anchor -> (nodes, text, height) of the anchored node once composed
        self.anchor_sizes: dict[str, tuple[int, int, int]] = {}
        self.open_anchors: set[str] = set()
        self.checked_mappings: set[int] = set()

    # --- composing: sizes and depth --------------------------------------------------------

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event: Any = self.peek_event()
        if self.check_event(AliasEvent):
            anchor = event.anchor
            if anchor in self.open_anchors:
                raise LimitExceeded(None, None, f"recursive alias *{anchor}", event.start_mark)
            if anchor in self.anchor_sizes:
                nodes, text, height = self.anchor_sizes[anchor]
                self._grow(nodes, text, event.start_mark)
                self._reach(self.depth + height, event.start_mark)
            return self._compose(parent, index)

        self.depth += 1
        outer_deepest, self.deepest = self.deepest, self.depth
        self._reach(self.depth, event.start_mark)
        before = (self.expanded_nodes, self.expanded_text)
        self._grow(1, len(event.value) if isinstance(event, ScalarEvent) else 0, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self.open_anchors.add(anchor)
        node = self._compose(parent, index)
        if anchor is not None:
            self.open_anchors.discard(anchor)
            self.anchor_sizes[anchor] = (
                self.expanded_nodes - before[0],
                self.expanded_text - before[1],
                self.deepest - self.depth + 1,
            )
        self.deepest = max(outer_deepest, self.deepest)
        self.depth -= 1
        return node

    def _compose(self, parent: Node | None, index: Any) -> Node:
        node = super().compose_node(parent, index)
        assert node is not None  # only a stream end has no node, and it is never composed here
        return node

    def _grow(self, nodes: int, text: int, mark: Any) -> None:
        self.expanded_nodes += nodes
        self.expanded_text += text
        if self.expanded_nodes > self.limits.max_nodes:
            raise LimitExceeded(
                None,
                None,
                f"the document expands to more than {self.limits.max_nodes} nodes "
                "(aliases count as what they stand for; the limit MYCELIAL_CONFIG_MAX_NODES)",
                mark,
            )
        if self.expanded_text > self.limits.max_text:
            raise LimitExceeded(
                None,
                None,
                f"the document expands to more than {self.limits.max_text} characters of values "
                "(aliases count as what they stand for; the limit MYCELIAL_CONFIG_MAX_TEXT)",
                mark,
            )

    def _reach(self, depth: int, mark: Any) -> None:
        self.deepest = max(self.deepest, depth)
        if depth > self.limits.max_depth:
            raise LimitExceeded(
                None,
                None,
                f"nested deeper than {self.limits.max_depth} levels (the limit MYCELIAL_CONFIG_MAX_DEPTH)",
                mark,
            )

    # --- constructing: duplicate keys and JSON types ---------------------------------------

    def flatten_mapping(self, node: MappingNode) -> None:
        # merging rewrites a mapping in place: look for duplicates while it is still as written
        self._check_duplicates(node)
        super().flatten_mapping(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: MappingNode) -> None:
        if id(node) in self.checked_mappings:
            return
        self.checked_mappings.add(id(node))
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # explicit keys may override merged ones: that is what a merge is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = first_lines.get(key)
            except TypeError:
                continue  # an unhashable key: SafeConstructor reports it
            if first is not None:
                raise DuplicateKey(
                    None, None, f"duplicate key {shown(key)} (first at line {first})", key_node.start_mark
                )
            first_lines[key] = line

    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and SURROGATE.search(value):
            raise ConstructorError(
                None, None, "a value holds a lone surrogate escape (not a character)", node.start_mark
            )
        return value

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, IndexError, KeyError, OverflowError):
            # an explicit tag on a value it does not fit (!!int '', !!bool maybe), or an integer
            # longer than Python converts: SafeConstructor lets those escape as they are
            kind = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"cannot read {shown(node.value)} as {kind}", node.start_mark
            ) from None

    def construct_unsupported(self, node: Node) -> Any:
        raise ConstructorError(
            None, None, f"tag {node.tag} is not supported (use plain text)", node.start_mark
        )


# a plain scalar that looks like a date stays text; an explicit !!timestamp is refused below
BoundedComposer.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP_TAG]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
for _suffix in UNSUPPORTED_TAGS:
    BoundedComposer.add_constructor(  # type: ignore[type-var]
        f"tag:yaml.org,2002:{_suffix}", BoundedComposer.construct_unsupported
    )


class PythonBoundedLoader(BoundedComposer, Reader, Scanner, Parser):
    """The bounded loader on PyYAML's pure-Python parser."""

    def __init__(self, stream: str, *, limits: ConfigLimits) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        BoundedComposer.__init__(self, limits=limits)


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class CBoundedLoader(BoundedComposer, CParser):
        """The bounded loader on libyaml's parser."""

        def __init__(self, stream: str, *, limits: ConfigLimits) -> None:
            CParser.__init__(self, stream)
            BoundedComposer.__init__(self, limits=limits)

    BoundedLoader: Callable[..., BoundedComposer] = CBoundedLoader
else:  # pragma: no cover - PyYAML's wheels ship libyaml
    BoundedLoader = PythonBoundedLoader


def load_yaml(
    text: str,
    *,
    source: str,
    limits: ConfigLimits,
    loader_class: Callable[..., BoundedComposer] | None = None,
) -> Any:
    """The single document in ``text`` as plain JSON types, or ConfigError with one line."""
    bad = Reader.NON_PRINTABLE.search(text)
    if bad is not None:  # before any parser, so that both report it alike
        raise ConfigError([f"{source}: {_bad_character(text, bad)}"])
    loader = None
    try:
        loader = (loader_class or BoundedLoader)(text, limits=limits)
        return loader.get_single_data()
    except ReaderError as exc:  # pragma: no cover - the check above finds every such character
        raise ConfigError([f"{source}: invalid YAML: {_one_line(str(exc))}"]) from None
    except (LimitExceeded, DuplicateKey) as exc:
        raise ConfigError([f"{source}: {_where(exc)}{exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(
            [f"{source}: invalid YAML{_at(exc)}: {_one_line(exc.problem or str(exc))}"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_one_line(str(exc))}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _bad_character(text: str, match: re.Match[str]) -> str:
    line = text.count("\n", 0, match.start()) + 1
    column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
    return f"line {line}, column {column}: unacceptable character #x{ord(match.group()):04x} in YAML"


def _where(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    return f"line {mark.line + 1}: " if mark is not None else ""


def _at(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())
