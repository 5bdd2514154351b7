"""Bring up ctr_vla_ros: policy node, reuse-mask diagnostics, the robot (LIBERO simulation or a driver adapter)
and RViz.

    ros2 launch ctr_vla_ros bringup.launch.py [config:=FILE] [checkpoint:=DIR] [robot:=sim|kinova|franka|none]
                                              [rviz:=true|false] [record:=true|false] [ctr_params:=FILE]

Every node reads the same parameter file (`config`), then the robot setup's file (config/robot_<robot>.yaml: the
robot's node, and the policy's execution mode and clamps for that robot); `checkpoint` overrides the policy's
checkpoint; `ctr_params` is read last by the policy (e.g. the `ctr:` settings `ctr-vla-sweep` recommends).
`record:=true` also starts the recorder (MCAP files of the policy's inputs and outputs). Motion stays disabled until `ros2 service call /ctr_vla_policy/enable std_srvs/srv/SetBool
"{data: true}"`.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo
from launch.conditions import IfCondition, LaunchConfigurationEquals
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node

def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory('ctr_vla_ros'))
    config = LaunchConfiguration('config')
    robot_config = PathJoinSubstitution([str(share / 'config'), ['robot_', LaunchConfiguration('robot'), '.yaml']])
    # The LIBERO simulation publishes /clock and advances in lockstep with the policy: follow its time.
    sim_time = {'use_sim_time': PythonExpression(["'", LaunchConfiguration('robot'), "' == 'sim'"])}

    return LaunchDescription([
        DeclareLaunchArgument('config', default_value=str(share / 'config' / 'ctr_vla.yaml'),
                              description='parameter file for every node'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='OpenVLA-OFT checkpoint directory (empty: tiny RANDOM-WEIGHT demo)'),
        DeclareLaunchArgument('robot', default_value='sim', choices=['sim', 'kinova', 'franka', 'none'],
                              description='what executes the deltas'),
        DeclareLaunchArgument('rviz', default_value='true', choices=['true', 'false'],
                              description='start RViz with the camera and overlay views'),
        DeclareLaunchArgument('record', default_value='false', choices=['true', 'false'],
                              description="record the policy's inputs and outputs to MCAP files"),
        DeclareLaunchArgument('ctr_params', default_value=config,
                              description='parameter file the policy reads last (default: `config` again)'),
        Node(package='ctr_vla_ros', executable='ctr_vla_policy', name='ctr_vla_policy', output='screen',
             parameters=[config, robot_config, LaunchConfiguration('ctr_params'),
                         {'checkpoint': LaunchConfiguration('checkpoint')}, sim_time]),
        Node(package='ctr_vla_ros', executable='ctr_vla_diagnostics', name='ctr_vla_diagnostics', output='screen',
             parameters=[config, sim_time]),
        Node(package='ctr_vla_ros', executable='ctr_vla_recorder', name='ctr_vla_recorder', output='screen',
             parameters=[config], condition=IfCondition(LaunchConfiguration('record'))),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
             arguments=['-d', str(share / 'config' / 'ctr_vla.rviz')],
             condition=IfCondition(LaunchConfiguration('rviz'))),
        Node(package='ctr_vla_ros', executable='ctr_vla_libero_sim', name='ctr_vla_libero_sim', output='screen',
             parameters=[config, robot_config], condition=LaunchConfigurationEquals('robot', 'sim')),
        Node(package='ctr_vla_ros', executable='ctr_vla_kinova_adapter', name='ctr_vla_kinova_adapter',
             output='screen', parameters=[config, robot_config],
             condition=LaunchConfigurationEquals('robot', 'kinova')),
        Node(package='ctr_vla_ros', executable='ctr_vla_franka_adapter', name='ctr_vla_franka_adapter',
             output='screen', parameters=[config, robot_config],
             condition=LaunchConfigurationEquals('robot', 'franka')),
        LogInfo(msg='motion is disabled until /ctr_vla_policy/enable is called'),
    ])
