"""Real processes over real topics: node executables run as their own processes (started with the package's
NodeProcess, tools/node_processes.py), driven from a separate rclpy node living in the test process (its own
context, spun on a background thread)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor



class Driver:
    """The test's own rclpy node, spinning in the background."""

    def __init__(self, name: str = 'test_driver') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context was shut down
            pass

    def record(self, message_type: type, topic: str, qos: Any = 10) -> list:
        received: list = []
        self.node.create_subscription(message_type, topic, received.append, qos)
        return received

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for: {message}')
        time.sleep(0.02)
