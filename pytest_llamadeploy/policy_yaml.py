"""Reading a policy file: YAML that cannot be turned against the gate.

A policy file is reviewed by people and then trusted by production, so what
it says must be what a reviewer sees. PyYAML's SafeLoader is safe against code
execution but not against these, each refused here with the file and the line:

- anchors and aliases (``&a`` / ``*a``): a 600-byte "billion laughs" file
  expands to 10^9 strings once validated (more than 60 s and 2.9 GB before this
  loader); policies share values through ``extends:``, never through aliases;
- merge keys (``<<:``): they hide which value wins;
- duplicate keys at any level: YAML silently keeps the last one, so a second
  ``targets.api_url`` further down would win unseen;
- nesting deeper than :data:`MAX_DEPTH` (no policy key is more than 4 deep);
- bytes that are not UTF-8 (the error gives the byte offset);
- files larger than :data:`MAX_BYTES` or with more than :data:`MAX_NODES` values.
  PyYAML's pure-Python parser (the one whose composer can be checked) needs
  ~30 us per byte of dense flow YAML on a 2-core CI machine: 35 s for 0.6 MB of
  ``[[1,1,...],...]``. The two limits bound any file to well under a second;
  the shipped policies are under 5 KB and 400 values;
- integers too long to convert, dates that do not exist: reported, never a
  traceback.

Every message is cut to :data:`MAX_ERROR_CHARS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

#: Fifty times the largest shipped policy (comments included); parsed in ~0.25 s.
MAX_BYTES = 256 * 1024
#: Scalars, lists and mappings: twelve times the largest shipped policy (defaults.yaml: 355).
MAX_NODES = 5000
MAX_DEPTH = 16
MAX_ERROR_CHARS = 400

_MERGE_TAG = "tag:yaml.org,2002:merge"


class PolicyYamlError(Exception):
    """A file that cannot be read as a policy; the message names the file and, where known, the line."""


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters (an error must never print megabytes)."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[: limit - 25] + f"... ({len(flat) - limit + 25} more chars)"


class _Strict:
    """The checks, on PyYAML's Python composer and constructor: no aliases, anchors, merge keys, duplicate
    keys or deep nesting. Mixed in before ``Composer`` so that every node passes through them."""

    _depth = 0
    _nodes = 0

    peek_event: Any  # the parser's (mixed in beside)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # Checked on the event, before anything is composed: the bomb is refused at its first anchor.
        event = self.peek_event()
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise ComposerError(None, None, f"alias *{event.anchor} is not allowed in a policy (aliases can expand "
                                "to gigabytes); write the value out, or share it through `extends:`", mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise ComposerError(None, None, f"anchor &{anchor} is not allowed in a policy (anchors exist to be "
                                "aliased); write the value out, or share it through `extends:`", mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} values in one file; a policy is a page of YAML "
                                "(share values through `extends:`)", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; no policy key is", mark)
            return super().compose_node(parent, index)  # type: ignore[misc,no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise ConstructorError(None, None, "merge key `<<` is not allowed in a policy: it hides which "
                                       "value wins; write the keys out, or use `extends:`", key_node.start_mark)
            if not isinstance(key_node, ScalarNode):
                continue  # SafeLoader refuses unhashable keys itself
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConstructorError(None, None, f"duplicate key {clip(repr(key), 80)} at line {first_line[key]} and "
                                       f"line {line} of the same mapping: YAML would silently keep only the last one; "
                                       "remove one of them", key_node.start_mark)
            first_line[key] = line
        return super().construct_mapping(node, deep)  # type: ignore[misc,no-any-return]

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError) as exc:  # an integer of 5,000 digits, a 31st of February
            raise ConstructorError(None, None, f"{clip(repr(node.value), 60)} cannot be read: {exc}",
                                   node.start_mark) from None


def _libyaml_usable() -> bool:
    """libyaml's parser, if it builds its events from the ``yaml.events`` classes the composer checks against.

    The C module is imported once per process and keeps the classes of that first import: when the
    ``yaml`` modules were dropped from ``sys.modules`` and imported again (pytester does that between
    tests), its events match none of the composer's classes and every file fails to compose.
    """
    if not yaml.__with_libyaml__:
        return False
    from yaml import _yaml, events

    return getattr(_yaml, "ScalarEvent", None) is events.ScalarEvent


if _libyaml_usable():
    from yaml._yaml import CParser

    class StrictLoader(_Strict, Composer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's scanner and parser (C) under the Python composer with the checks: the events are the same,
        the composition is ours. 36 against 133 ms for defaults.yaml on a loaded 2-core machine, and a gate run
        reads three policy files, several times (every ``pytest --env`` pays this at start-up)."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:  # without libyaml (or with a stale one): the same checks on the pure-Python parser
    class StrictLoader(_Strict, yaml.SafeLoader):  # type: ignore[no-redef]
        """SafeLoader with the checks."""


def _describe(path: Path, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        if "maximum nesting depth" in what:  # libyaml's own limit (1,000 levels), met while it scans ahead
            what = f"nested more than {MAX_DEPTH} levels deep; no policy key is"
        return clip(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {what}")
    if isinstance(exc, yaml.reader.ReaderError):
        return clip(f"{path}: character {exc.position}: {exc.reason} ({exc.character!r}); a policy is plain text")
    return clip(f"{path}: not valid YAML: {exc}")


def read_policy_yaml(path: Path) -> Any:
    """The data in ``path``, or :class:`PolicyYamlError` naming the file, the place and the fix."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PolicyYamlError(f"{path}: {size} bytes, over the {MAX_BYTES // 1024} KiB limit for a policy file; "
                                  "a policy is a page of YAML (share values through `extends:`)")
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PolicyYamlError(f"{path}: cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:  # it grew between stat and read
        raise PolicyYamlError(f"{path}: over the {MAX_BYTES // 1024} KiB limit for a policy file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyYamlError(f"{path}: not UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (line {line}) "
                              "cannot be decoded; save the file as UTF-8") from None
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise PolicyYamlError(_describe(path, exc)) from None
    finally:
        loader.dispose()
