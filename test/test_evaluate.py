"""Closed-loop evaluation: paired statistics, starts, the in-process runner and the ROS harness, and that the two
produce the same actions on the same episode."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from ctr_vla_ros.evaluation.configurations import CONFIGS, ctr_config
from ctr_vla_ros.evaluation.starts import Start, check_training_starts, starts
from ctr_vla_ros.evaluation.statistics import keeps_success, mcnemar_exact, summarize, wilson_interval


def test_wilson_interval():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(15, 20) == pytest.approx((0.5313, 0.8881), abs=1e-4)


def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32) == mcnemar_exact(0, 5)
    assert mcnemar_exact(3, 1) == pytest.approx(2 * 5 / 16)
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857, abs=1e-5)  # scipy.stats.binomtest(2, 12).pvalue
    assert mcnemar_exact(4, 4) == 1.0


def episode(task, start, success, times, executed, reuse=(0.5, 0.25)):
    return {'task_id': task, 'start': start, 'success': success, 'steps': 100, 'query_times': times,
            'executed_flops': executed, 'full_recompute_flops': 10.0 * len(times), 'vision_reuse': list(reuse),
            'llm_reuse': list(reuse)}


def test_summary_pairs_every_episode_with_the_same_episode_with_ctr_off():
    off = [episode(0, 'fixed-40', True, [0.06, 0.06], 20.0, (0.0, 0.0)),
           episode(0, 'fixed-41', True, [0.06], 10.0, (0.0, 0.0)),
           episode(1, 'sampled-3', False, [0.06], 10.0, (0.0, 0.0))]
    config = [episode(0, 'fixed-40', False, [0.03, 0.03], 10.0), episode(0, 'fixed-41', True, [0.03], 5.0),
              episode(1, 'sampled-3', True, [0.03], 5.0, (0.2, 0.1))]
    summary = summarize(config, off)
    assert (summary['episodes'], summary['successes']) == (3, 2)
    assert summary['per_task'] == {'0': [1, 2], '1': [1, 1]}
    assert summary['discordant'] == {'off_only': 1, 'config_only': 1} and summary['mcnemar_p'] == 1.0
    assert summary['flops_reduction'] == pytest.approx(0.5) and summary['speedup_vs_off'] == pytest.approx(2.0)
    assert summary['vision_reuse'] == pytest.approx([(0.5 * 3 + 0.2) / 4, (0.25 * 3 + 0.1) / 4])
    assert summarize(off, None)['flops_reduction'] == pytest.approx(1 - 40 / 40)


def test_kept_success_is_at_most_three_points_fewer_and_mcnemar_p_at_least_0_2():
    def summary(off_only, config_only, paired=100):
        return {'paired_episodes': paired, 'discordant': {'off_only': off_only, 'config_only': config_only},
                'mcnemar_p': mcnemar_exact(off_only, config_only)}

    assert keeps_success(summary(0, 0)) and keeps_success(summary(3, 0))  # p = 0.25
    assert not keeps_success(summary(4, 0))  # 4 points fewer (p = 0.125)
    assert keeps_success(summary(8, 5)) and not keeps_success(summary(8, 1))  # p = 0.58; p = 0.04
    assert not keeps_success(summary(3, 0, paired=50)) and not keeps_success({'paired_episodes': 0})


def test_starts_and_their_reserved_ranges():
    chosen = starts((40, 41), (9998, 10001))
    assert [start.key for start in chosen] == ['fixed-40', 'fixed-41', 'sampled-9998', 'sampled-9999',
                                               'sampled-10000', 'sampled-10001']
    assert [start.reserved_for_evaluation for start in chosen] == [True, True, True, True, False, False]
    assert Start.from_key('sampled-17') == Start('sampled', 17)
    check_training_starts(starts((0, 39), (10000, 10500)))
    for fixed, sampled in (((39, 40), None), (None, (9999, 10000))):
        with pytest.raises(ValueError, match='reserved for evaluation'):
            check_training_starts(starts(fixed, sampled))
    with pytest.raises(ValueError):
        Start('random', 1)


def test_a_configuration_is_a_preset_or_a_parameter_file(tmp_path):
    from ctr_vla_ros.ctr.config import PRESETS

    path = tmp_path / 'recommended_ctr.yaml'
    tuned = PRESETS['fast'].replace(top_k=64)
    path.write_text(tuned.to_parameters_yaml())
    assert ctr_config(str(path)) == tuned and ctr_config('llm_only') == PRESETS['paper'].replace(vision_reuse=False)
    assert CONFIGS['vision_only'].vision_reuse and not CONFIGS['vision_only'].llm_reuse
    with pytest.raises(ValueError, match='not one of'):
        ctr_config('fastest')


def test_the_runner_reads_the_policy_node_settings_from_its_parameter_files(tmp_path):
    from ctr_vla_ros.evaluation.rollout import NodeRules
    from ctr_vla_ros.tools.node_processes import CONFIG, parameter_file_values, robot_config

    values = parameter_file_values('ctr_vla_policy', [CONFIG, robot_config('sim')])
    assert values['execution_mode'] == 'open_loop' and values['ctr.top_k'] == 32
    assert values['camera_names'] == ['primary', 'wrist']  # from the /** section
    override = tmp_path / 'override.yaml'
    override.write_text('ctr_vla_policy:\n  ros__parameters:\n    max_translation_step: [0.01, 0.02, 0.03]\n'
                        '    proprio_range_margin: 0.25\n')
    rules = NodeRules.from_parameter_files([CONFIG, robot_config('sim'), override])
    assert rules.supervisor.limits.max_abs[:3] == (0.01, 0.02, 0.03) and rules.range_margin == 0.25
    assert rules.supervisor.execution_mode == 'open_loop' and rules.convention.translation_scale == 0.05


@pytest.fixture(scope='module')
def libero():
    return pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')


def test_rendering_only_the_frames_used_changes_nothing_else(libero):
    """Two simulations of the same episode, one rendering every step and one only every 9th: the same states at
    every step and the same frames wherever both rendered, from a fixed and from a sampled start."""
    from ctr_vla_ros.sim.libero_env import LiberoSimulation

    every, on_request = (LiberoSimulation('libero_goal', 1, resolution=64) for _ in range(2))
    random = np.random.default_rng(0)
    for start in (Start('fixed', 41), Start('sampled', 7)):
        first, second = start.reset(every), start.reset(on_request)
        np.testing.assert_array_equal(first.primary, second.primary)
        np.testing.assert_array_equal(first.wrist, second.wrist)
        for step in range(20):
            action = np.concatenate([random.uniform(-0.5, 0.5, 6), [1.0 if step > 10 else -1.0]])
            first, second = every.step(action), on_request.step(action, render=step % 9 == 8)
            np.testing.assert_array_equal(every.sim_state(), on_request.sim_state())
            if step % 9 == 8:
                np.testing.assert_array_equal(first.primary, second.primary)
                np.testing.assert_array_equal(first.wrist, second.wrist)
            else:
                assert second.primary is None and second.wrist is None
    # A sampled start is a placement of its own, the same for the same seed.
    sampled = [Start('sampled', seed).reset(every).object_positions['akita_black_bowl_1'] for seed in (7, 8, 7)]
    assert not np.allclose(sampled[0], sampled[1]) and np.array_equal(sampled[0], sampled[2])
    every.close()
    on_request.close()


def run_runner(checkpoint, output, workers):
    command = [sys.executable, '-m', 'ctr_vla_ros.evaluation.runner', '--checkpoint', str(checkpoint),
               '--unnorm-key', 'libero_goal_no_noops', '--suite', 'libero_goal', '--tasks', '0',
               '--init-states', '40', '40', '--sampled-inits', '3', '3', '--configs', 'paper', '--max-steps', '20',
               '--workers', str(workers), '--output', str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read_log(path):
    with gzip.open(path, 'rt') as file:
        return {(item['configuration'], item['start']): item for item in map(json.loads, file)}


def test_the_runner_pairs_configurations_resumes_and_is_deterministic(libero, tiny_checkpoint, tmp_path):
    output = tmp_path / 'eval_tiny.json'
    first = run_runner(tiny_checkpoint, output, workers=2)
    results = json.loads(output.read_text())
    assert list(results['configurations']) == ['off', 'paper']  # off is added: everything is paired with it
    episodes = results['episodes']
    assert sorted((item['configuration'], item['start']) for item in episodes) == [
        ('off', 'fixed-40'), ('off', 'sampled-3'), ('paper', 'fixed-40'), ('paper', 'sampled-3')]
    for item in episodes:
        assert item['steps'] == 20 and item['instruction'] == 'open the middle drawer of the cabinet'
        assert item['hold_steps'] >= len(item['query_times']) + 1  # the first step, and one per chunk
    paper = results['configurations']['paper']
    assert paper['paired_episodes'] == 2 and 0 < paper['flops_reduction'] < 1 and 0 <= paper['mcnemar_p'] <= 1
    assert results['configurations']['off']['flops_reduction'] == 0.0
    assert '| `paper` | ' in first.stdout and 'episodes per hour' in first.stdout
    log = read_log(output.with_name('eval_tiny_queries.jsonl.gz'))
    assert set(log) == {(item['configuration'], item['start']) for item in episodes}
    for (name, _), item in log.items():
        assert item['queries'][0]['step'] == 1  # after the first step, held while the policy was enabled
        assert item['queries'][0]['keyframe_reason'] == {'off': 'ctr_disabled', 'paper': 'episode_reset'}[name]

    again = run_runner(tiny_checkpoint, output, workers=2)
    assert json.loads(output.read_text())['episodes'] == episodes  # nothing left to run: nothing re-run
    assert 'episodes per hour' not in again.stdout

    # Another worker count, another order: the same episodes, action for action.
    other = tmp_path / 'other' / 'eval_tiny.json'
    run_runner(tiny_checkpoint, other, workers=1)
    other_log = read_log(other.with_name('eval_tiny_queries.jsonl.gz'))
    for key, item in log.items():
        assert [query['normalized_actions'] for query in other_log[key]['queries']] == \
            [query['normalized_actions'] for query in item['queries']]


@pytest.mark.ros
def test_the_ros_harness_and_the_runner_produce_the_same_actions(libero, tiny_checkpoint, tmp_path, ros_domain):
    """The same short episode over ROS (simulation and policy node as processes) and in the runner: the same chunks
    at the same steps, as long as the ROS side kept the nominal schedule (over ROS a chunk that takes longer to
    compute than the simulation takes to render a step costs an extra hold; the comparison stops there)."""
    import torch

    from ctr_vla_ros.evaluation.rollout import NodeRules, run_episode
    from ctr_vla_ros.model.checkpoint import load_checkpoint
    from ctr_vla_ros.policy import VlaPolicy
    from ctr_vla_ros.sim.libero_env import LiberoSimulation

    output = tmp_path / 'eval_ros.json'
    # Initial states 0 and 1: the second starts after a reset, as every episode but a run's first does.
    command = [sys.executable, '-m', 'ctr_vla_ros.tools.evaluate', '--checkpoint', str(tiny_checkpoint),
               '--unnorm-key', 'libero_goal_no_noops', '--suite', 'libero_goal', '--tasks', '0',
               '--init-states', '0', '1', '--configs', 'paper', '--max-steps', '30', '--command-wait', '5',
               '--output', str(output), '--logs', str(tmp_path / 'logs')]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    assert list(results['configurations']) == ['off', 'paper'] and results['settings']['harness'] == 'ros'
    log = read_log(output.with_name('eval_ros_queries.jsonl.gz'))
    assert set(log) == {('off', 'fixed-0'), ('off', 'fixed-1'), ('paper', 'fixed-0'), ('paper', 'fixed-1')}

    torch.set_num_threads(2)  # as the node runs
    rules = NodeRules.from_parameter_files()
    checkpoint = load_checkpoint(tiny_checkpoint)
    simulation = LiberoSimulation('libero_goal', 0, resolution=128)
    for name in ('off', 'paper'):
        policy = VlaPolicy(checkpoint, 'libero_goal_no_noops', rules.rotate180, rules.center_crop, CONFIGS[name])
        runner = run_episode(simulation, policy, rules, 0, Start('fixed', 1), 30)
        over_ros = log[(name, 'fixed-1')]['queries']
        compared = 0
        for ours, theirs in zip(runner.queries, over_ros):
            if ours.step != theirs['step']:
                break  # the ROS side held once more than the nominal schedule: from here on the worlds differ
            np.testing.assert_allclose(ours.normalized_actions, theirs['normalized_actions'], atol=1e-4,
                                       err_msg=f'{name}: query at step {ours.step}')
            assert ours.keyframe_reason == theirs['keyframe_reason']
            compared += 1
        assert compared >= 1 and runner.queries[0].step == over_ros[0]['step'] == 1, (name, compared)
        print(f'{name}: {compared} of {len(over_ros)} queries compared')
    simulation.close()


def test_staleness_is_zero_on_repeated_inputs_and_measured_per_layer_otherwise(tiny_checkpoint, libero_sequence):
    from ctr_vla_ros.evaluation.staleness import measure, summarize as summarize_staleness
    from ctr_vla_ros.model.checkpoint import load_checkpoint
    from ctr_vla_ros.policy import VlaPolicy

    checkpoint = load_checkpoint(tiny_checkpoint)
    everything = CONFIGS['paper'].replace(difference_threshold=1.0, top_k=0, max_reuse_per_image=0,
                                          keyframe_interval=1000, input_timeout=1e6)
    repeated = {key: np.stack([value[0]] * 3) if key != 'instruction' else value
                for key, value in libero_sequence.items()}
    for sequence, exact in ((repeated, True), ({key: value[:4] if key != 'instruction' else value
                                                for key, value in libero_sequence.items()}, False)):
        records = measure(VlaPolicy(checkpoint, 'libero_spatial_no_noops', ctr=everything),
                          VlaPolicy(checkpoint, 'libero_spatial_no_noops', ctr=CONFIGS['off']), sequence)
        summary = summarize_staleness(records)
        assert summary['queries_with_reuse'] == len(sequence['agentview']) - 1 and summary['mean_reused'] == 1.0
        layers = checkpoint.architecture.llm.num_layers
        assert len(summary['keys']) == len(summary['values']) == layers
        if exact:
            assert summary['visual_tokens'] == 0.0 and max(summary['keys'] + summary['values']) == 0.0
        else:
            assert summary['visual_tokens'] > 0 and min(summary['keys'] + summary['values']) > 0


def test_the_fragility_control_takes_its_size_from_the_staleness_measurement(tmp_path):
    from ctr_vla_ros.evaluation.configurations import Configuration, configuration, fragility_noise

    with pytest.raises(ValueError, match='measure it first'):
        fragility_noise('tiny', tmp_path)
    summaries = {'seq_a / paper': {'keys': [0.01, 0.2], 'values': [0.03, 0.2], 'mean_reused': 0.3},
                 'seq_b / paper': {'keys': [0.01, 0.1], 'values': [0.03, 0.1], 'mean_reused': 0.1},
                 'seq_a / fast': {'keys': [1.0, 1.0], 'values': [1.0, 1.0], 'mean_reused': 0.9}}
    (tmp_path / 'staleness_tiny.json').write_text(json.dumps({'summaries': summaries}))
    noise = fragility_noise('tiny', tmp_path)
    assert noise.fraction == pytest.approx(0.2) and noise.relative == pytest.approx((0.02, 0.15))
    chosen = Configuration(CONFIGS['off'], noise)
    assert Configuration.from_json(json.loads(json.dumps(chosen.to_json()))) == chosen
    assert configuration('fast', 'tiny') == Configuration(CONFIGS['fast'])


def test_divergence_finds_where_actions_and_arms_part_and_how_the_failure_ends():
    from ctr_vla_ros.evaluation.divergence import analyse_pair, phase

    def query(step, z, opening, distance, action):
        return {'step': step, 'eef_position': [0.0, 0.0, z], 'gripper_opening': opening,
                'goal_distances': {'bowl': distance}, 'normalized_actions': [[action] * 7] * 8,
                'keyframe_reason': ''}

    assert [phase(query(0, 1.0, 0.08, d, 0)) for d in (0.3, 0.05)] == ['reach', 'grasp']
    assert [phase(query(0, 1.0, 0.005, d, 0)) for d in (0.07, 0.2)] == ['carry', 'empty']
    off = {'task_id': 1, 'start': 'fixed-42', 'queries': [
        query(1, 1.2, 0.08, 0.30, 0.0), query(10, 1.1, 0.08, 0.20, 0.5), query(19, 1.0, 0.08, 0.06, 0.5),
        query(28, 0.95, 0.005, 0.07, -0.5), query(37, 1.05, 0.005, 0.07, 0.3)]}
    failed = {'task_id': 1, 'start': 'fixed-42', 'queries': [
        query(1, 1.2, 0.08, 0.30, 0.0), query(10, 1.1, 0.08, 0.20, 0.52), query(19, 1.0, 0.08, 0.06, 0.6),
        query(28, 0.95, 0.005, 0.07, -0.5), query(37, 0.97, 0.005, 0.15, 0.1)]}
    analysis = analyse_pair(off, failed, epsilon=0.05, separation=0.01)
    assert analysis['first_action_divergence']['query'] == 2 and analysis['first_action_divergence']['phase'] == 'grasp'
    assert analysis['first_separation']['query'] == 4 and analysis['first_separation']['phase'] == 'empty'
    assert analysis['first_separation']['eef_speed'] == pytest.approx(0.02 / (9 * 0.05))
    assert analysis['ending'] == 'dropped' and analysis['off_phases'][-1] == 'carry'


def test_results_resume_take_more_configurations_and_start_over_on_other_episodes(tmp_path):
    from ctr_vla_ros.ctr.engine import VisualNoise
    from ctr_vla_ros.evaluation.configurations import CONFIGS, Configuration
    from ctr_vla_ros.evaluation.results import Results, read_query_log

    off = Configuration(CONFIGS['off']).to_json()
    fragility = Configuration(CONFIGS['off'], VisualNoise(0.3, (0.1, 0.2))).to_json()
    paper = Configuration(CONFIGS['paper']).to_json()

    def settings(**configurations):
        return {'starts': ['fixed-40'], 'configurations': configurations}

    def episode(name):
        return {'configuration': name, 'task_id': 1, 'start': 'fixed-40', 'success': True, 'steps': 9,
                'query_times': [0.1], 'executed_flops': 1.0, 'full_recompute_flops': 1.0,
                'vision_reuse': [0.0, 0.0], 'llm_reuse': [0.0, 0.0], 'queries': [{'step': 1}]}

    output = tmp_path / 'eval_x.json'
    results = Results(output, settings(off=off, fragility=fragility))
    results.add(episode('off'))
    results.add(episode('fragility'))
    with gzip.open(results.query_log, 'at') as file:
        file.write('{"configuration": "off", "task_id": 1, "start": "fix')  # a run killed mid-write
    # Tuples in the settings, lists in the file: the same settings.
    again = Results(output, settings(off=off, fragility=fragility))
    assert again.done == {('off', 1, 'fixed-40'), ('fragility', 1, 'fixed-40')}
    assert [item['queries'] for item in read_query_log(again.query_log)] == [[{'step': 1}]] * 2
    # A file written before a CTR setting existed: the setting takes its default, and nothing starts over; nor
    # does a change of the defaults, which a disabled engine does not read.
    stored = json.loads(output.read_text())
    for definition in stored['settings']['configurations'].values():
        del definition['ctr']['row_bucket'], definition['ctr']['cuda_graphs']
        definition['ctr'].update(top_k=160, llm_prune_layer=-1)
    output.write_text(json.dumps(stored))
    assert Results(output, settings(off=off, fragility=fragility)).done == again.done
    # Another configuration joins the same episodes: the others stay, and so does one not asked for this time.
    more = Results(output, settings(off=off, paper=paper))
    assert more.done == {('off', 1, 'fixed-40'), ('fragility', 1, 'fixed-40')}
    assert list(more.settings['configurations']) == ['off', 'fragility', 'paper']
    assert set(more.summaries()) == {'off', 'fragility'}
    # A configuration defined differently starts over; other episodes: everything starts over.
    other_noise = Configuration(CONFIGS['off'], VisualNoise(0.3, (0.1, 0.3))).to_json()
    assert Results(output, settings(off=off, fragility=other_noise)).done == {('off', 1, 'fixed-40')}
    assert Results(output, {**settings(off=off), 'starts': ['fixed-41']}).done == set()
