"""ROS 2 message definitions as MCAP `ros2msg` schemas: a type's .msg text followed by the text of every message
type it uses, each after a separator line and `MSG: <type>` (the concatenation rosbag2 writes), so a reader can
decode the CDR bytes with nothing installed."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcap_ros2._dynamic import serialize_dynamic

PRIMITIVE_TYPES = frozenset((
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64',
    'uint64', 'string', 'wstring'))
SEPARATOR = '=' * 80


def split_type_name(type_name: str) -> tuple[str, str]:
    """'sensor_msgs/msg/Image' or 'sensor_msgs/Image' -> ('sensor_msgs', 'Image')."""
    parts = type_name.split('/')
    if len(parts) == 3 and parts[1] == 'msg':
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f'not a ROS 2 message type name: {type_name!r}')


def definition_file(type_name: str) -> Path:
    """The installed .msg file: <prefix>/share/<package>/msg/<Name>.msg for every prefix in AMENT_PREFIX_PATH (a
    sourced ROS installation), then this Python environment's own prefix (the pip-installed ROS wheels)."""
    package, name = split_type_name(type_name)
    prefixes = [prefix for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if prefix]
    for prefix in prefixes + [sys.prefix]:
        path = Path(prefix) / 'share' / package / 'msg' / f'{name}.msg'
        if path.is_file():
            return path
    raise FileNotFoundError(f'no definition of {type_name} found (looked for share/{package}/msg/{name}.msg in '
                            f'{prefixes + [sys.prefix]})')


def field_types(package: str, text: str) -> list[str]:
    """The message types (package/msg/Name) of the fields of one .msg text; primitives and constants skipped."""
    types = []
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        field_type, rest = line.split(None, 1)
        if re.match(r'\w+\s*=', rest):
            continue  # a constant: TYPE NAME=VALUE
        base = re.sub(r'(\[[^\]]*\]|<=\d+)', '', field_type)
        if base in PRIMITIVE_TYPES:
            continue
        dependency_package, name = split_type_name(base) if '/' in base else (package, base)
        types.append(f'{dependency_package}/msg/{name}')
    return types


@functools.lru_cache(maxsize=None)
def message_definition(type_name: str) -> str:
    """The full ros2msg schema text of a message type, e.g. 'sensor_msgs/msg/Image'."""
    package, name = split_type_name(type_name)
    root = definition_file(type_name).read_text()
    sections, seen, pending = [root.strip()], {f'{package}/msg/{name}'}, field_types(package, root)
    while pending:
        dependency = pending.pop(0)
        if dependency in seen:
            continue
        seen.add(dependency)
        text = definition_file(dependency).read_text()
        sections.append(f'{SEPARATOR}\nMSG: {dependency}\n{text.strip()}')
        pending.extend(field_types(split_type_name(dependency)[0], text))
    return '\n'.join(sections) + '\n'


@functools.lru_cache(maxsize=None)
def cdr_encoder(type_name: str) -> Callable[[Any], bytes]:
    """Serialises a message given as nested dicts (field name -> value) to CDR bytes, without ROS."""
    package, name = split_type_name(type_name)
    full_name = f'{package}/msg/{name}'
    return serialize_dynamic(full_name, message_definition(full_name))[full_name]
