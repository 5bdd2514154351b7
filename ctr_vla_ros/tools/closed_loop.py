"""The policy in closed loop with the LIBERO simulation over ROS, as `bringup.launch.py robot:=sim` runs it: the
simulation, policy and (optionally) diagnostics nodes as separate processes with the package's parameter files,
and a client node in this process that enables the policy, resets episodes and records what happened. Shared by
`make demo` (one episode, with pictures) and `make eval` (many episodes per CTR configuration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctr_vla_ros.tools.node_processes import CONFIG, NodeProcess, robot_config

SERVICE_TIMEOUT = 30.0  # s
EPISODE_START_TIMEOUT = 600.0  # s: a reset re-creates the scene and settles it; minutes on a loaded 2-core machine
# What bringup.launch.py starts for robot:=sim rviz:=false (a test keeps the two in step).
LAUNCHED_NODES = ('ctr_vla_libero_sim', 'ctr_vla_policy', 'ctr_vla_diagnostics')


def start_simulation_stack(logs: Path, policy: dict[str, Any], simulation: dict[str, Any],
                           diagnostics: dict[str, Any] | None = None) -> list[NodeProcess]:
    """The nodes of robot:=sim with these parameter overrides (the policy and diagnostics follow the simulation's
    clock); diagnostics None: no diagnostics node."""
    logs.mkdir(parents=True, exist_ok=True)
    overrides = {'ctr_vla_libero_sim': simulation, 'ctr_vla_policy': {**policy, 'use_sim_time': True},
                 'ctr_vla_diagnostics': None if diagnostics is None else {**diagnostics, 'use_sim_time': True}}
    return [NodeProcess(name, [CONFIG, robot_config('sim')], overrides[name], logs / f'{name}.log')
            for name in LAUNCHED_NODES if overrides[name] is not None]


class ClosedLoopClient:
    """A ROS node in this process, spinning in the background: the latest SimStatus, every CtrStats, ActionChunk and
    ReuseMask per camera (`clear_outputs` per episode), and the services to enable the policy and reset both
    sides."""

    def __init__(self, name: str, camera_names: tuple[str, ...] = ('primary', 'wrist')) -> None:
        from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, ReuseMask, SimStatus

        from ctr_vla_ros.nodes.runtime import BackgroundNode

        # Spinning from the start: the subscriptions below are created while it waits, which rclpy allows.
        self.background = BackgroundNode(name)
        self.node = self.background.node
        self.lock = threading.Lock()
        self.status: Any = None
        self.stats: list[Any] = []
        self.chunks: list[Any] = []
        self.masks: dict[str, list[Any]] = {camera: [] for camera in camera_names}
        self.node.create_subscription(SimStatus, '/ctr_vla_libero_sim/status', self.on_status, 10)
        self.node.create_subscription(CtrStats, '/ctr_vla_policy/ctr_stats', self.on_stats, 10)
        self.node.create_subscription(ActionChunk, '/ctr_vla_policy/action_chunk', self.on_chunk, 10)
        for camera in camera_names:
            self.node.create_subscription(ReuseMask, f'/ctr_vla_policy/reuse_mask/{camera}',
                                          lambda mask, camera=camera: self.on_mask(camera, mask), 10)

    def on_status(self, status: Any) -> None:
        with self.lock:
            self.status = status

    def on_stats(self, stats: Any) -> None:
        with self.lock:
            self.stats.append(stats)

    def on_chunk(self, chunk: Any) -> None:
        with self.lock:
            self.chunks.append(chunk)

    def on_mask(self, camera: str, mask: Any) -> None:
        with self.lock:
            self.masks[camera].append(mask)

    def clear_outputs(self) -> None:
        with self.lock:
            self.stats.clear()
            self.chunks.clear()
            for masks in self.masks.values():
                masks.clear()

    def call(self, service_type: type, name: str, request: Any, timeout: float = SERVICE_TIMEOUT) -> Any:
        client = self.node.create_client(service_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f'{name} is not available (see the node logs)')
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f'{name} did not answer')
                time.sleep(0.02)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def enable_policy(self, enabled: bool = True, timeout: float = SERVICE_TIMEOUT) -> None:
        from std_srvs.srv import SetBool
        if not self.call(SetBool, '/ctr_vla_policy/enable', SetBool.Request(data=enabled), timeout).success:
            raise RuntimeError('enabling the policy failed' if enabled else 'disabling the policy failed')

    def next_episode(self, init_state: int) -> None:
        """The simulation's next initial state (`init_state`), with a policy that starts fresh: disabled while the
        simulation resets (no chunk computed from the last episode's frames can reach the new one), reset (queued
        chunk dropped, CTR keyframe), and enabled again once the new episode's first observation is out."""
        from std_srvs.srv import Trigger
        self.enable_policy(False)
        self.call(Trigger, '/ctr_vla_policy/reset', Trigger.Request())
        with self.lock:
            self.status = None
        self.call(Trigger, '/ctr_vla_libero_sim/reset', Trigger.Request())
        self.wait_until(lambda status: status is not None and status.init_state == init_state and not status.done,
                        EPISODE_START_TIMEOUT, f'the episode from initial state {init_state}')
        self.enable_policy()

    def wait_until(self, condition: Callable[[Any], bool], timeout: float, what: str,
                   while_waiting: Callable[[Any], None] | None = None) -> Any:
        """Poll the latest SimStatus until `condition(status)`; `while_waiting(status)` runs at each poll."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                status = self.status
            if condition(status):
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}')
            if while_waiting is not None:
                while_waiting(status)
            time.sleep(0.2)

    def close(self) -> None:
        self.background.close()
