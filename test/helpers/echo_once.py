"""Separate process: subscribe to a topic, print the first message received as JSON, exit 0 (or 1 on timeout)."""

import argparse
import importlib
import json
import sys

import rclpy
from rclpy.node import Node

from helpers.ros_messages import message_to_data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('message_type', help='e.g. ctr_vla_ros_msgs/msg/ReuseMask')
    parser.add_argument('topic')
    parser.add_argument('--timeout', type=float, default=20.0)
    args = parser.parse_args()

    package, _, type_name = args.message_type.split('/')
    message_class = getattr(importlib.import_module(f'{package}.msg'), type_name)

    rclpy.init()
    node = Node('echo_once')
    received = []
    node.create_subscription(message_class, args.topic, received.append, 10)
    print('ready', flush=True)
    deadline = node.get_clock().now().nanoseconds + int(args.timeout * 1e9)
    while not received and node.get_clock().now().nanoseconds < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    if received:
        print(json.dumps(message_to_data(received[0])), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if received else 1


if __name__ == '__main__':
    sys.exit(main())
