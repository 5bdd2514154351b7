"""Both packages build from a clean tree the way the README tells a ROS user to build them (colcon), and the
messages build with plain cmake the way `make setup` installs them into the venv."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.build

REPO = Path(__file__).resolve().parents[1]


def copy_sources(destination: Path) -> Path:
    """A clean source tree: the repository's tracked layout without any build, install or venv folders."""
    source = destination / 'src' / 'ctr_vla_ros'
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'build', 'install', 'log', '__pycache__', '*.egg-info', 'checkpoints', 'demo_output'))
    return source


def build_environment() -> dict:
    environment = dict(os.environ)
    environment['AMENT_PREFIX_PATH'] = sys.prefix
    environment['CMAKE_PREFIX_PATH'] = sys.prefix
    return environment


@pytest.mark.skipif(shutil.which('colcon') is None, reason='colcon is not installed')
def test_colcon_builds_both_packages_from_a_clean_tree(tmp_path):
    source = copy_sources(tmp_path)
    result = subprocess.run(
        ['colcon', 'build', '--base-paths', str(source), str(source / 'msg'),
         '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF'],
        cwd=tmp_path, env=build_environment(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Summary: 2 packages finished' in result.stdout

    install = tmp_path / 'install'
    generated = list((install / 'ctr_vla_ros_msgs' / 'lib').glob('python3*/site-packages/ctr_vla_ros_msgs/msg'))
    assert generated, 'the message package installed no Python module'
    for name in ['_end_effector_delta.py', '_action_chunk.py', '_reuse_mask.py', '_ctr_stats.py']:
        assert (generated[0] / name).is_file(), name
    share = install / 'ctr_vla_ros' / 'share' / 'ctr_vla_ros'
    assert (share / 'package.xml').is_file()
    assert (install / 'ctr_vla_ros' / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'ctr_vla_ros').is_file()


def test_cmake_installs_messages_into_a_prefix(tmp_path):
    source = copy_sources(tmp_path)
    prefix = tmp_path / 'prefix'
    commands = [
        ['cmake', '-S', str(source / 'msg'), '-B', str(tmp_path / 'build'), f'-DCMAKE_INSTALL_PREFIX={prefix}',
         '-DBUILD_TESTING=OFF', f'-DPython3_EXECUTABLE={sys.executable}'],
        ['cmake', '--build', str(tmp_path / 'build'), '--parallel', '2'],
        ['cmake', '--install', str(tmp_path / 'build')],
    ]
    for command in commands:
        result = subprocess.run(command, env=build_environment(), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
    site_packages = next(prefix.glob('lib/python3*/site-packages'))
    environment = build_environment()
    environment['PYTHONPATH'] = str(site_packages)
    environment['LD_LIBRARY_PATH'] = f'{prefix / "lib"}:{environment.get("LD_LIBRARY_PATH", "")}'
    check = subprocess.run(
        [sys.executable, '-c', 'import ctr_vla_ros_msgs.msg as m, sys; '
         'sys.stdout.write(m.__file__ + " " + str(m.ReuseMask.STATE_KEYFRAME))'],
        env=environment, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    module_file, keyframe_state = check.stdout.split()
    assert module_file.startswith(str(site_packages))
    assert keyframe_state == '3'
