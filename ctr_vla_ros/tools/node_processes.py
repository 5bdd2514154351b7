"""Our node executables as separate processes, started the way the launch file starts them: the package's parameter
files, then a file of overrides (a `-p name:=value` on the command line would lose to a node's own section of the
first file). One helper for the demo, the evaluation, the benchmarks and the tests; every process stays on
loopback."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'config' / 'ctr_vla.yaml'


def robot_config(robot: str) -> Path:
    """The parameter file of one robot setup (sim, kinova, franka, none), read after CONFIG."""
    return REPO / 'config' / f'robot_{robot}.yaml'


def interrupt_on_sigterm() -> None:
    """A tool stopped with SIGTERM (kill, a job's timeout) cleans up as on Ctrl-C: the node processes it started
    are stopped by its `finally` blocks instead of being left running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def network_safe_environment() -> dict[str, str]:
    """This process's environment with ROS discovery on loopback and a ROS domain (kept if already set)."""
    environment = dict(os.environ)
    environment['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    environment.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))
    environment.setdefault('MUJOCO_GL', 'osmesa')
    return environment


class NodeProcess:
    """One node executable of this package. Output goes to `log_file` if given, else it is kept in memory."""

    def __init__(self, executable: str, parameter_files: Sequence[Path] = (CONFIG,),
                 overrides: dict[str, Any] | None = None, log_file: Path | None = None) -> None:
        command = [str(Path(sys.executable).parent / executable), '--ros-args']
        for path in parameter_files:
            command += ['--params-file', str(path)]
        if overrides:
            command += ['--params-file', str(self._write_overrides(executable, overrides, log_file))]
        self.executable = executable
        self.log_file = log_file
        self._lines: list[str] = []
        output = open(log_file, 'w') if log_file else subprocess.PIPE
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True,
                                        env=network_safe_environment())
        self._reader = None
        if log_file is None:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    @staticmethod
    def _write_overrides(executable: str, overrides: dict[str, Any], log_file: Path | None) -> Path:
        """Overrides for the node named like its executable, as a parameter file."""
        content = {executable: {'ros__parameters': overrides}}
        if log_file is not None:
            path = log_file.with_name(f'{executable}_overrides.yaml')
            path.write_text(yaml.safe_dump(content))
            return path
        with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as file:
            yaml.safe_dump(content, file)
        return Path(file.name)

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def log(self) -> str:
        if self.log_file is not None:
            return self.log_file.read_text()
        return ''.join(self._lines)

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{self.executable} never logged {text!r} (exit status {self.process.poll()}); '
                                   f'log:\n{self.log}')
            time.sleep(0.05)

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl-C, as a terminal would send it; the exit status (killed after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def interrupt_all(processes: Sequence[NodeProcess], timeout: float = 60.0) -> dict[str, int]:
    """Ctrl-C to every process at once, then their exit statuses by executable."""
    for node in processes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGINT)
    return {node.executable: node.interrupt(timeout) for node in processes}


def parameter_file_values(node: str, parameter_files: Sequence[Path]) -> dict[str, Any]:
    """The parameters these files give a node, read as ROS reads them without starting it: each file's `/**` section,
    then the node's own section, later files overriding earlier ones; nested keys flattened to `ctr.top_k`."""
    values: dict[str, Any] = {}

    def flatten(section: dict[str, Any], prefix: str = '') -> None:
        for key, value in section.items():
            if isinstance(value, dict):
                flatten(value, f'{prefix}{key}.')
            else:
                values[f'{prefix}{key}'] = value

    for path in parameter_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        for section in ('/**', node):
            flatten((data.get(section) or {}).get('ros__parameters', {}))
    return values
