"""Real processes over real topics: node executables run as their own processes (started with the package's
NodeProcess, tools/node_processes.py), driven from a separate rclpy node living in the test process (its own
context, spun on a background thread)."""

from __future__ import annotations

import time
from typing import Any, Callable

from ctr_vla_ros.nodes.runtime import BackgroundNode


class Driver(BackgroundNode):
    """The test's own rclpy node, spinning in the background."""

    def __init__(self, name: str = 'test_driver') -> None:
        super().__init__(name)

    def record(self, message_type: type, topic: str, qos: Any = 10) -> list:
        received: list = []
        self.node.create_subscription(message_type, topic, received.append, qos)
        return received


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for: {message}')
        time.sleep(0.02)
