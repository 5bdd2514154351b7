"""Settings dataclasses built from YAML / JSON mappings: unknown keys refused, values converted to the declared
field types (YAML 1.1 reads `1e-6` as a string), booleans never guessed from other types."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Settings = TypeVar('Settings')
_CONVERTERS = {'int': int, 'float': float, 'str': str}


def build_dataclass(cls: type[Settings], values: dict[str, Any], section: str,
                    error: type[ValueError] = ValueError) -> Settings:
    fields = {field.name: field.type for field in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise error(f'unknown keys {sorted(unknown)} in "{section}"; expected some of {sorted(fields)}')
    converted = {}
    for key, value in values.items():
        kind = fields[key]
        if kind == 'bool':
            if not isinstance(value, bool):
                raise error(f'"{section}.{key}" must be true or false, got {value!r}')
            converted[key] = value
            continue
        try:
            converted[key] = _CONVERTERS[kind](value)
        except (TypeError, ValueError) as exception:
            raise error(f'"{section}.{key}": {value!r} is not a {kind}') from exception
    return cls(**converted)
