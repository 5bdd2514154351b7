"""`make demo` end to end in a shortened form: real simulation, policy and diagnostics processes in closed loop."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_vla_ros.tools.closed_loop import LAUNCHED_NODES

REPO = Path(__file__).resolve().parents[1]


def test_demo_starts_what_the_launch_file_starts_for_the_simulation():
    tree = ast.parse((REPO / 'launch' / 'bringup.launch.py').read_text())
    launched = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'Node':
            keywords = {item.arg: item.value for item in call.keywords}
            condition = keywords.get('condition')
            kind = getattr(condition.func, 'id', None) if condition is not None else None
            if kind == 'IfCondition':
                continue  # off by default: RViz here, the recorder (the demo adds it as record:=true would)
            robot = ast.literal_eval(condition.args[1]) if kind == 'LaunchConfigurationEquals' else None
            if ast.literal_eval(keywords['package']) == 'ctr_vla_ros' and robot in (None, 'sim'):
                launched.add(ast.literal_eval(keywords['executable']))
    assert launched == set(LAUNCHED_NODES)


@pytest.mark.ros
def test_demo_runs_end_to_end_and_writes_its_files(tmp_path, ros_domain):
    pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
    result = subprocess.run([sys.executable, '-m', 'ctr_vla_ros.tools.demo', '--steps', '20', '--output',
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / 'summary.json').read_text())
    # By default the shipped, trained checkpoint on its task (the episode is cut short long before success).
    assert not summary['random_weights'] and summary['sim_steps'] == 20
    assert summary['instruction'] == 'put the bowl on the stove'
    assert summary['queries'] >= 2 and summary['keyframes'] >= 1
    assert set(summary['exit_codes'].values()) == {0}
    assert 0 < summary['flops_saved'] < 1
    for name in ('demo.gif', 'contact_sheet.png', 'trajectory.png', 'summary.md'):
        assert (tmp_path / name).stat().st_size > 0
    # The episode was recorded beside the nodes, and the recording replays offline to the recorded actions.
    replayed = summary['replay']
    counts = replayed['message_counts']
    assert counts['/ctr_vla_policy/action_chunk'] >= summary['queries'] - 1
    assert counts['/ctr_vla_policy/predicted_path'] == counts['/ctr_vla_policy/action_chunk']
    assert counts['/camera/primary/image_raw'] >= 20 and counts['/ee_pose'] >= 20 and counts['/instruction'] == 1
    assert replayed['reproduced'] and replayed['queries'] >= 2
    assert 'Random weights' not in (tmp_path / 'summary.md').read_text()
