"""The launch file and the parameter file, checked where `launch` is not installable: structurally (every Node is
an installed executable, every LaunchConfiguration is a declared argument) and against the declared parameters."""

import ast
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'bringup.launch.py'
CONFIG = REPO / 'config' / 'ctr_vla.yaml'
NODE_MODULES = {
    'ctr_vla_policy': 'ctr_vla_ros.nodes.policy_node',
    'ctr_vla_diagnostics': 'ctr_vla_ros.nodes.diagnostics_node',
    'ctr_vla_recorder': 'ctr_vla_ros.nodes.recorder_node',
    'ctr_vla_kinova_adapter': 'ctr_vla_ros.adapters.kinova',
    'ctr_vla_franka_adapter': 'ctr_vla_ros.adapters.franka',
    'ctr_vla_libero_sim': 'ctr_vla_ros.sim.libero_sim_node',
}


def calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def keyword(call, name):
    return next((ast.literal_eval(item.value) for item in call.keywords if item.arg == name), None)


def console_scripts():
    tree = ast.parse((REPO / 'setup.py').read_text())
    entry_points = next(keyword(call, 'entry_points') for call in calls(tree, 'setup'))
    return {line.split('=')[0].strip(): line.split('=')[1].strip() for line in entry_points['console_scripts']}


def test_every_launched_node_is_an_installed_executable():
    tree = ast.parse(LAUNCH_FILE.read_text())
    scripts = console_scripts()
    nodes = calls(tree, 'Node')
    assert len(nodes) == 7
    for node in nodes:
        package, executable, name = (keyword(node, key) for key in ('package', 'executable', 'name'))
        if package == 'rviz2':
            continue
        assert package == 'ctr_vla_ros'
        assert executable in scripts, f'{executable} is not a console script in setup.py'
        assert name == executable and name in NODE_MODULES
        module, _, function = scripts[executable].partition(':')
        assert callable(getattr(importlib.import_module(module), function))


def test_every_launch_configuration_is_a_declared_argument():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {ast.literal_eval(call.args[0]) for call in calls(tree, 'DeclareLaunchArgument')}
    assert declared == {'config', 'checkpoint', 'robot', 'rviz', 'record', 'ctr_params'}
    used = {ast.literal_eval(call.args[0]) for call in calls(tree, 'LaunchConfiguration')}
    used |= {ast.literal_eval(call.args[0]) for call in calls(tree, 'LaunchConfigurationEquals')}
    assert used <= declared
    robots = {ast.literal_eval(call.args[1]) for call in calls(tree, 'LaunchConfigurationEquals')}
    robot_argument = next(call for call in calls(tree, 'DeclareLaunchArgument')
                          if ast.literal_eval(call.args[0]) == 'robot')
    assert robots | {'none'} == set(keyword(robot_argument, 'choices'))
    assert (REPO / 'config' / 'ctr_vla.rviz').is_file()


def flatten(parameters, prefix=''):
    flat = {}
    for key, value in parameters.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value
    return flat


ROBOT_NODES = {'sim': 'ctr_vla_libero_sim', 'kinova': 'ctr_vla_kinova_adapter',
               'franka': 'ctr_vla_franka_adapter', 'none': None}


def robot_file(robot):
    return yaml.safe_load((REPO / 'config' / f'robot_{robot}.yaml').read_text())


def declared_defaults(node_name):
    return {spec.name: spec.default for spec in importlib.import_module(NODE_MODULES[node_name]).PARAMETERS}


@pytest.mark.parametrize('node_name', sorted(NODE_MODULES))
def test_parameter_files_match_the_declared_parameters(node_name):
    """Each node's full section (in ctr_vla.yaml, or in its robot's file) lists every declared parameter with its
    default: the files are the documentation of the defaults."""
    if node_name == 'ctr_vla_libero_sim':
        pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed')
    config = yaml.safe_load(CONFIG.read_text())
    robot = next((robot for robot, node in ROBOT_NODES.items() if node == node_name), None)
    section = config[node_name] if robot is None else robot_file(robot)[node_name]
    shared = flatten(config['/**']['ros__parameters'])
    values = shared | flatten(section['ros__parameters'])
    declared = declared_defaults(node_name)
    assert set(values) - set(shared) == set(declared) - set(shared)
    for name, default in declared.items():
        if name in values:
            assert values[name] == default and type(values[name]) is type(default), name


@pytest.mark.parametrize('robot', sorted(ROBOT_NODES))
def test_robot_files_override_the_policy_with_declared_values(robot):
    overrides = flatten(robot_file(robot).get('ctr_vla_policy', {}).get('ros__parameters', {}))
    specs = {spec.name: spec for spec in importlib.import_module(NODE_MODULES['ctr_vla_policy']).PARAMETERS}
    for name, value in overrides.items():
        assert name in specs, name
        assert type(value) is type(specs[name].default), name
        specs[name].validate(value)
    if robot == 'sim':
        assert overrides == {}  # the release's open_loop execution and LIBERO's clamps
        return
    # Real arms: continuous motion, and clamps safe for a first run (norm at most 0.25 m/s and 1 rad/s).
    rate = yaml.safe_load(CONFIG.read_text())['ctr_vla_policy']['ros__parameters']['control_rate']
    assert overrides['execution_mode'] == 'overlap'
    assert np.linalg.norm(overrides['max_translation_step']) * rate <= 0.25
    assert np.linalg.norm(overrides['max_rotation_step']) * rate <= 1.0


@pytest.mark.skipif(shutil.which('ros2') is None, reason='ros2 launch needs a ROS distro (not installable here)')
def test_launch_file_parses_with_ros2_launch():
    import subprocess
    result = subprocess.run(['ros2', 'launch', '--show-args', str(LAUNCH_FILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "'robot'" in result.stdout
