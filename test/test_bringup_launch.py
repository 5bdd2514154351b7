"""launch_testing: the bringup launch file starts the policy and diagnostics nodes. Runs where a ROS distro
provides launch_testing (not installable from pip); skipped otherwise."""

import os
import unittest

import pytest

pytest.importorskip('launch_testing', reason='launch_testing needs a ROS distro')
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'


@pytest.mark.launch_test
def generate_test_description():
    bringup = os.path.join(get_package_share_directory('ctr_vla_ros'), 'launch', 'bringup.launch.py')
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(bringup),
                                 launch_arguments={'robot': 'none', 'rviz': 'false'}.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestBringup(unittest.TestCase):
    def test_nodes_come_up(self, proc_output):
        proc_output.assertWaitFor('ready:', timeout=120)
        proc_output.assertWaitFor('overlays on', timeout=60)
        rclpy.init()
        try:
            node = rclpy.create_node('bringup_probe')
            names = set()
            for _ in range(50):
                rclpy.spin_once(node, timeout_sec=0.1)
                names = {name for name, _ in node.get_node_names_and_namespaces()}
                if {'ctr_vla_policy', 'ctr_vla_diagnostics'} <= names:
                    break
            self.assertLessEqual({'ctr_vla_policy', 'ctr_vla_diagnostics'}, names)
        finally:
            rclpy.shutdown()
