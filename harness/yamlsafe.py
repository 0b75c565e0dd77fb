"""A YAML loader for configs that bounds alias expansion (no "billion laughs") and rejects duplicate keys.

PyYAML's safe loader shares the node of an anchor between its aliases, but constructing the document (and
everything after it: validation, hashing, JSON dumps) expands every alias: a few hundred bytes of nested
aliases become gigabytes. :class:`BoundedLoader` counts aliases while composing and the expanded size of the
composed graph before constructing anything, and refuses a document past :data:`MAX_ALIASES` aliases or
:data:`MAX_EXPANDED_NODES` nodes once expanded, or one whose aliases refer to themselves.
"""

from __future__ import annotations

import yaml

MAX_ALIASES = 200  # a config uses a handful (shared option blocks)
MAX_EXPANDED_NODES = 200_000  # a real config expands to a few thousand nodes at most


class YAMLBoundError(yaml.YAMLError):
    """The document passes a bound; ``problem`` says which (the config loader shows it as one line)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes the document has once every alias is expanded; stops counting past ``limit``. A node that contains
    itself (a recursive alias) raises :class:`YAMLBoundError`."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise YAMLBoundError("a recursive alias (a node that contains itself) is not allowed in a config")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        active.discard(key)
        memo[key] = total
        return total

    return size(root)


class BoundedLoader(yaml.SafeLoader):
    """Safe loader with bounded alias use and expanded size; duplicate mapping keys are an error."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLBoundError(f"more than {MAX_ALIASES} aliases (*name); a config needs far fewer")
        return super().compose_node(parent, index)

    def get_single_node(self):  # noqa: ANN201
        node = super().get_single_node()
        if node is not None and self._aliases:
            n = expanded_size(node, MAX_EXPANDED_NODES)
            if n > MAX_EXPANDED_NODES:
                raise YAMLBoundError(
                    f"the aliases (*name) expand the document past {MAX_EXPANDED_NODES} nodes; refusing to load it"
                )
        return node


def _construct_mapping(loader: BoundedLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the base constructor reports it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


BoundedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str):  # noqa: ANN201
    """Parse one YAML document within the bounds (raises ``yaml.YAMLError``, :class:`YAMLBoundError` included)."""
    return yaml.load(text, Loader=BoundedLoader)
