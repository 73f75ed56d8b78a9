"""YAML settings files (`train --config`, `analysis study --config`) read with duplicate keys refused.

PyYAML keeps the last of two equal keys without a word: a second `eval:` block pasted into a
study config silently replaced the first. A small loader is all it takes (no maintained package
offers just this), so it lives here, shared by both readers.
"""
from __future__ import annotations

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a mapping that holds one key twice."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:  # the keys written here (a merged `<<: *x` key may be overridden)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # construct_mapping refuses an unhashable key in its own words
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}): the later one would "
                "silently replace the earlier", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)  # then merge keys (<<), as SafeLoader does
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_settings_yaml(text: str) -> Any:
    """`yaml.safe_load(text)`, with a key given twice in one mapping a yaml.YAMLError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
