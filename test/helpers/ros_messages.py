"""Generic conversion of ROS messages to plain Python data, for comparing messages across processes."""

import array
from typing import Any

import numpy as np


def message_to_data(message: Any) -> Any:
    """Convert a ROS message (nested, arrays included) into dicts, lists and Python scalars."""
    if hasattr(message, 'get_fields_and_field_types'):
        return {name: message_to_data(getattr(message, name)) for name in message.get_fields_and_field_types()}
    if isinstance(message, (array.array, np.ndarray, list, tuple)):
        return [message_to_data(item) for item in message]
    if isinstance(message, (bytes, bytearray)):
        return list(message)
    if isinstance(message, np.generic):
        return message.item()
    return message
