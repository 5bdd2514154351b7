"""Real processes over real topics: start a node executable as its own process, and drive it from a separate
rclpy node living in the test process (its own context, spun on a background thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'config' / 'ctr_vla.yaml'


class NodeProcess:
    """A node started the way the launch file starts it: executable + the package's params file, then a second
    params file with this test's overrides (`-p` would lose to the node's own section of the first file)."""

    def __init__(self, executable: str, node_name: str, parameters: dict[str, Any], config: Path = CONFIG) -> None:
        command = [str(Path(sys.executable).parent / executable), '--ros-args', '--params-file', str(config)]
        if parameters:
            overrides = tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False)
            yaml.safe_dump({node_name: {'ros__parameters': parameters}}, overrides)
            overrides.close()
            command += ['--params-file', overrides.name]
        assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return ''.join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f'node never logged {text!r}; exit {self.process.poll()}; log:\n{self.log}')
            time.sleep(0.05)

    def interrupt(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
