"""Process entry for our nodes: exit with status 0 within a second of Ctrl-C / SIGTERM, with a last word from the
node.

rclpy's own signal handler shuts the context down before our code runs, so a node could not send its final zero
command. Here SIGINT and SIGTERM only set a flag; the spin loop sees it within `SIGNAL_CHECK_PERIOD`, then the
node's `on_shutdown` runs while the context is still valid, and everything is torn down. (Raising from the handler
instead would land inside whatever rclpy was converting at that moment.) The process then ends at once: the
interpreter's own teardown with torch and rclpy loaded takes seconds and has nothing left to release."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

SIGNAL_CHECK_PERIOD = 0.1  # s


def run(make_node: Callable[[], Node], args: list[str] | None = None) -> NoReturn:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=SIGNAL_CHECK_PERIOD)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as error:  # configuration errors found at start-up
        print(f'{make_node.__name__}: {error}', file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            on_shutdown = getattr(node, 'on_shutdown', None)
            if on_shutdown is not None:
                on_shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class BackgroundNode:
    """A node of a tool or test process in its own context, spun on a background thread while the process does its
    work, and torn down safely: `close` (from the owner's thread, never from a callback) stops the spin loop and
    joins its thread before the node and the context are destroyed.

    rclpy crashes when a node is destroyed while a thread is inside an executor's wait: its own executor's
    (ros2/rclpy#968), and, seen in this project's tests, another context's: a test with two drivers segfaulted in
    the first one's `destroy_node` while the second one's thread waited. So every spin step of every BackgroundNode in
    the process counts itself in, and a teardown waits until no step is inside a wait (at most one spin period) and
    holds new ones back until it is done."""

    _steps = threading.Condition()  # guards the two counts below, for every BackgroundNode of the process
    _spinning = 0  # spin steps inside an executor now
    _tearing_down = 0  # teardowns waiting for them or running

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        # Without rclpy's signal handler, Ctrl-C raises KeyboardInterrupt and the owner's cleanup runs.
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f'{name}_spin', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        steps = BackgroundNode._steps
        try:
            while not self._stop.is_set():
                with steps:
                    steps.wait_for(lambda: BackgroundNode._tearing_down == 0)
                    BackgroundNode._spinning += 1
                try:
                    self.executor.spin_once(timeout_sec=SIGNAL_CHECK_PERIOD)
                finally:
                    with steps:
                        BackgroundNode._spinning -= 1
                        steps.notify_all()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        steps = BackgroundNode._steps
        with steps:
            BackgroundNode._tearing_down += 1
            steps.wait_for(lambda: BackgroundNode._spinning == 0)
        try:
            self.executor.shutdown()
            self.node.destroy_node()
            rclpy.shutdown(context=self.context)
        finally:
            with steps:
                BackgroundNode._tearing_down -= 1
                steps.notify_all()
