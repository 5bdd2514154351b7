"""The closed-loop evaluation: its statistics, and the harness end to end on a few steps (real simulation and policy
processes, the tiny random-weight checkpoint: the figures are not success figures)."""

import json
import subprocess
import sys

import pytest

from ctr_vla_ros.tools.evaluate import CONFIGS, summarize, wilson_interval


def test_wilson_interval():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(15, 20) == pytest.approx((0.5313, 0.8881), abs=1e-4)


def test_summary_counts_successes_costs_and_speedup():
    def episode(task, success, times, executed):
        return {'task_id': task, 'success': success, 'steps': 100,
                'queries': [{'total_time': time, 'executed_flops': flops, 'full_recompute_flops': 10.0,
                             'vision_reuse': 0.5, 'llm_reuse': 0.25} for time, flops in zip(times, executed)]}
    episodes = [episode(0, True, [0.02, 0.04], [10.0, 6.0]), episode(1, False, [0.03], [4.0])]
    summary = summarize(episodes, off_median_step=0.06)
    assert (summary['episodes'], summary['successes'], summary['success_rate']) == (2, 1, 0.5)
    assert summary['per_task'] == {'0': [1, 1], '1': [0, 1]}
    assert summary['median_step_s'] == pytest.approx(0.03) and summary['speedup_vs_off'] == pytest.approx(2.0)
    assert summary['flops_reduction'] == pytest.approx(1 - 20.0 / 30.0)
    assert CONFIGS['vision_only'].vision_reuse and not CONFIGS['vision_only'].llm_reuse


@pytest.mark.ros
def test_evaluation_harness_runs_and_resumes(tiny_checkpoint, tmp_path, ros_domain):
    pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
    output = tmp_path / 'eval.json'
    command = [sys.executable, '-m', 'ctr_vla_ros.tools.evaluate', '--checkpoint', str(tiny_checkpoint),
               '--unnorm-key', 'libero_goal_no_noops', '--suite', 'libero_goal', '--tasks', '0',
               '--init-states', '0', '1', '--configs', 'off', 'paper', '--max-steps', '6', '--output', str(output),
               '--logs', str(tmp_path / 'logs')]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    assert list(results['configurations']) == ['off', 'paper']
    for name, summary in results['configurations'].items():
        assert summary['episodes'] == 2 and 0 <= summary['successes'] <= 2 and summary['queries'] >= 2
        assert summary['median_step_s'] > 0 and summary['speedup_vs_off'] > 0
    assert results['configurations']['off']['flops_reduction'] == 0.0
    episodes = results['episodes']
    assert [(episode['configuration'], episode['init_state']) for episode in episodes] == [
        ('off', 0), ('off', 1), ('paper', 0), ('paper', 1)]
    for episode in episodes:
        assert episode['steps'] == 6 and episode['instruction'] == 'open the middle drawer of the cabinet'
        assert episode['queries'][0]['keyframe']  # every episode starts from a reset policy
    assert '| `paper` | 2 |' in result.stdout

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(output.read_text())['episodes'] == episodes  # nothing left to run: nothing re-run


def test_a_configuration_is_a_preset_or_a_parameter_file(tmp_path):
    from ctr_vla_ros.ctr.config import PRESETS
    from ctr_vla_ros.tools.evaluate import ctr_config

    path = tmp_path / 'recommended_ctr.yaml'
    tuned = PRESETS['fast'].replace(top_k=64)
    path.write_text(tuned.to_parameters_yaml())
    assert ctr_config(str(path)) == tuned and ctr_config('llm_only') == PRESETS['paper'].replace(vision_reuse=False)
    with pytest.raises(ValueError, match='not one of'):
        ctr_config('fastest')
