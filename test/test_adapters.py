"""Robot adapters: every mapping (frames, units, limits, gripper conventions) and the Kinova / Franka nodes as
real processes (their gripper actions need control_msgs / franka_msgs from a ROS distro and are not exercised)."""

import time

import numpy as np
import pytest

from ctr_vla_ros.adapters.mapping import (FrankaGripperGoal, GripperChangeFilter, VelocityLimits, adapter_command,
                                          delta_to_twist, franka_gripper_goal, kinova_gripper_position,
                                          quaternion_to_matrix)

LIMITS = VelocityLimits(max_linear=0.1, max_angular=0.5)


def test_velocity_is_delta_over_period_in_the_base_frame():
    linear, angular = delta_to_twist(np.array([0.001, -0.002, 0.0]), np.array([0.0, 0.005, 0.0]), 0.05, LIMITS)
    np.testing.assert_allclose(linear, [0.02, -0.04, 0.0])
    np.testing.assert_allclose(angular, [0.0, 0.1, 0.0])


def test_limits_scale_the_whole_vector_and_keep_its_direction():
    linear, angular = delta_to_twist(np.array([0.03, 0.04, 0.0]), np.array([0.0, 0.0, -0.1]), 0.05, LIMITS)
    np.testing.assert_allclose(linear, [0.06, 0.08, 0.0])  # 1.0 m/s scaled to 0.1 m/s
    np.testing.assert_allclose(angular, [0.0, 0.0, -0.5])
    with pytest.raises(ValueError, match='control period must be positive'):
        delta_to_twist(np.zeros(3), np.zeros(3), 0.0, LIMITS)


def test_tool_frame_rotates_base_frame_velocity():
    # Tool frame yawed +90 degrees about base z: base +x is tool -y.
    tool_in_base = quaternion_to_matrix(np.array([0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)]))
    np.testing.assert_allclose(tool_in_base @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    linear, angular = delta_to_twist(np.array([0.001, 0.0, 0.0]), np.array([0.0, 0.0, 0.001]), 0.05, LIMITS,
                                     tool_in_base)
    np.testing.assert_allclose(linear, [0.0, -0.02, 0.0], atol=1e-12)
    np.testing.assert_allclose(angular, [0.0, 0.0, 0.02], atol=1e-12)  # rotation about z is unchanged


def test_gripper_conventions():
    assert [kinova_gripper_position(command) for command in (-1.0, 0.0, 1.0, 3.0)] == [0.0, 0.4, 0.8, 0.8]
    assert franka_gripper_goal(1.0) == FrankaGripperGoal(grasp=True, width=0.0)
    assert franka_gripper_goal(-1.0) == FrankaGripperGoal(grasp=False, width=0.08)
    changes = GripperChangeFilter(threshold=0.2)
    assert [changes.changed(command) for command in (-1.0, -1.0, -0.9, 1.0, 1.0)] == [True, False, False, True,
                                                                                    False]


@pytest.mark.parametrize('gripper_mapping', [kinova_gripper_position, franka_gripper_goal], ids=['kinova', 'franka'])
def test_holds_and_stops_never_move_the_arm_or_the_gripper(gripper_mapping):
    """Whatever a HOLD or STOP carries (the held value, NaN before any motion, a stray value), the adapter sends zero
    velocity and no gripper goal; the next MOTION with the same gripper value sends none either."""
    changes = GripperChangeFilter(threshold=0.2)
    closing = adapter_command(True, np.array([0.001, 0, 0]), np.zeros(3), 1.0, 0.05, LIMITS, changes)
    assert closing.gripper == 1.0 and closing.linear[0] == pytest.approx(0.02)
    sent = [gripper_mapping(closing.gripper)]
    for gripper in (1.0, float('nan'), 0.0, -1.0):
        still = adapter_command(False, np.array([0.5, 0.5, 0.5]), np.ones(3), gripper, 0.05, LIMITS, changes)
        assert still.gripper is None and not still.linear.any() and not still.angular.any()
    after = adapter_command(True, np.zeros(3), np.zeros(3), 1.0, 0.05, LIMITS, changes)
    assert after.gripper is None and sent == [gripper_mapping(1.0)]
    with pytest.raises(ValueError, match='non-finite motion command'):
        adapter_command(True, np.zeros(3), np.zeros(3), float('nan'), 0.05, LIMITS, changes)


def gripper_commands(log):
    return [line.split('gripper command ')[1].strip() for line in log.splitlines() if 'gripper command ' in line]


@pytest.mark.ros
def test_kinova_adapter_twists_watchdog_and_shutdown(ros_domain):
    from ctr_vla_ros_msgs.msg import EndEffectorDelta
    from geometry_msgs.msg import PoseStamped, Twist
    from helpers.ros_harness import Driver, wait_until
    from ctr_vla_ros.tools.node_processes import CONFIG, NodeProcess, robot_config

    node = NodeProcess('ctr_vla_kinova_adapter', [CONFIG, robot_config('kinova')], {'command_timeout': 0.3})
    driver = Driver()
    try:
        twists = driver.record(Twist, '/twist_controller/commands')
        deltas = driver.node.create_publisher(EndEffectorDelta, '/ctr_vla_policy/ee_delta', 10)
        poses = driver.node.create_publisher(PoseStamped, '/ee_pose', 10)
        node.wait_for_log('twists on')
        wait_until(lambda: deltas.get_subscription_count() and poses.get_subscription_count(), 20, 'subscribers')
        pose = PoseStamped()
        pose.pose.orientation.z = pose.pose.orientation.w = float(np.sqrt(0.5))  # tool yawed +90 degrees
        delta = EndEffectorDelta(kind=EndEffectorDelta.MOTION, translation=[0.001, 0.0, 0.0],
                                 rotation=[0.0, 0.0, 0.0], gripper=-1.0, control_period=0.05)

        def send():
            poses.publish(pose)
            deltas.publish(delta)
            return any(abs(twist.linear.y) > 0 for twist in twists)

        wait_until(send, 20, 'a twist')
        moving = next(twist for twist in twists if abs(twist.linear.y) > 0)
        np.testing.assert_allclose([moving.linear.x, moving.linear.y, moving.linear.z], [0.0, -0.02, 0.0],
                                   atol=1e-12)
        count = len(twists)
        wait_until(lambda: len(twists) > count and twists[-1].linear.y == 0.0, 10, 'zero twist after silence')
        deltas.publish(delta)
        wait_until(lambda: twists[-1].linear.y != 0.0, 5, 'motion again')
        node.wait_for_log('gripper command -1.00')
        for kind, gripper in ((EndEffectorDelta.HOLD, 1.0), (EndEffectorDelta.STOP, float('nan'))):
            count = len(twists)
            deltas.publish(EndEffectorDelta(kind=kind, gripper=gripper, control_period=0.05))
            wait_until(lambda: len(twists) > count, 5, 'the twist for a HOLD / STOP')
            assert (twists[-1].linear.x, twists[-1].linear.y, twists[-1].angular.z) == (0.0, 0.0, 0.0)
        time.sleep(0.3)
        assert gripper_commands(node.log) == ['-1.00']  # no gripper goal from a HOLD or a STOP
        count = len(twists)
        assert node.interrupt() == 0
        wait_until(lambda: len(twists) > count, 5, 'the shutdown twist')
        assert (twists[-1].linear.x, twists[-1].linear.y, twists[-1].angular.z) == (0.0, 0.0, 0.0)
        try:
            import control_msgs  # noqa: F401  (a ROS distro provides it)
        except ImportError:
            assert 'control_msgs is not installed: the gripper will not be commanded' in node.log
    finally:
        node.kill()
        driver.close()


@pytest.mark.ros
def test_franka_adapter_publishes_base_frame_twists(ros_domain):
    from ctr_vla_ros_msgs.msg import EndEffectorDelta
    from geometry_msgs.msg import TwistStamped
    from helpers.ros_harness import Driver, wait_until
    from ctr_vla_ros.tools.node_processes import CONFIG, NodeProcess, robot_config

    node = NodeProcess('ctr_vla_franka_adapter', [CONFIG, robot_config('franka')])
    driver = Driver()
    try:
        twists = driver.record(TwistStamped, '/servo_node/delta_twist_cmds')
        deltas = driver.node.create_publisher(EndEffectorDelta, '/ctr_vla_policy/ee_delta', 10)
        node.wait_for_log('twists on')
        wait_until(lambda: deltas.get_subscription_count(), 20, 'subscriber')
        delta = EndEffectorDelta(kind=EndEffectorDelta.MOTION, translation=[0.0, 0.0, -0.05],
                                 rotation=[0.01, 0.0, 0.0], gripper=1.0, control_period=0.05)

        def send():
            deltas.publish(delta)
            return any(twist.twist.linear.z for twist in twists)

        wait_until(send, 20, 'a twist')
        moving = next(twist for twist in twists if twist.twist.linear.z)
        assert moving.header.frame_id == 'fr3_link0'
        np.testing.assert_allclose(moving.twist.linear.z, -0.1)  # 1 m/s limited to 0.1 m/s
        np.testing.assert_allclose(moving.twist.angular.x, 0.2)
        node.wait_for_log('gripper command +1.00')
        count = len(twists)
        deltas.publish(EndEffectorDelta(kind=EndEffectorDelta.STOP, gripper=-1.0, control_period=0.05))
        wait_until(lambda: len(twists) > count, 5, 'the twist for a STOP')
        assert (twists[-1].twist.linear.z, twists[-1].twist.angular.x) == (0.0, 0.0)
        time.sleep(0.3)
        assert set(gripper_commands(node.log)) == {'+1.00'}  # the STOP's stray -1.0 did not open the gripper
        assert node.interrupt() == 0
    finally:
        node.kill()
        driver.close()
