"""Process entry for our nodes: clean exit with status 0 on Ctrl-C / SIGTERM, with a last word from the node.

rclpy's own signal handler shuts the context down before our code runs, so a node could not send its final zero
command. Here SIGINT and SIGTERM raise KeyboardInterrupt in the spinning thread instead; the node's `on_shutdown`
runs while the context is still valid, then everything is torn down."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


SIGNAL_CHECK_PERIOD = 0.1  # s


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            # A bounded wait: Python runs signal handlers only between waits, so a node with no timer must still
            # come back here regularly to notice Ctrl-C.
            executor.spin_once(timeout_sec=SIGNAL_CHECK_PERIOD)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as error:  # configuration errors found at start-up
        print(f'{make_node.__name__}: {error}', file=sys.stderr)
        return 2
    finally:
        if node is not None:
            on_shutdown = getattr(node, 'on_shutdown', None)
            if on_shutdown is not None:
                on_shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
