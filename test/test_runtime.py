"""The process runtime of tools and tests: a background node is never destroyed while any background node of the
process is inside an executor's wait (rclpy crashes then)."""

import threading

import pytest

from ctr_vla_ros.nodes.runtime import BackgroundNode


@pytest.mark.ros
def test_a_background_node_is_destroyed_only_while_no_other_is_inside_a_spin_step(ros_domain):
    closing, other = BackgroundNode('closing'), BackgroundNode('other')
    inside, release = threading.Event(), threading.Event()
    spin_once = other.executor.spin_once

    def blocked_step(timeout_sec=None):  # a wait that lasts until the test releases it
        inside.set()
        release.wait(30)
        spin_once(timeout_sec=0)

    other.executor.spin_once = blocked_step
    seen_spinning = []
    destroy_node = closing.node.destroy_node

    def recorded_destroy():
        seen_spinning.append(BackgroundNode._spinning)
        destroy_node()

    closing.node.destroy_node = recorded_destroy
    try:
        assert inside.wait(10), 'the other node never spun'
        closer = threading.Thread(target=closing.close)
        closer.start()
        closer.join(0.5)
        assert closer.is_alive() and seen_spinning == [], 'destroyed while another node was inside its wait'
        release.set()
        closer.join(10)
        assert not closer.is_alive() and seen_spinning == [0]
    finally:
        release.set()
        other.executor.spin_once = spin_once
        other.close()
