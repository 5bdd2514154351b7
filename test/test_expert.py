"""The scripted LIBERO-Goal expert and its recorder. Skipped only when the simulation extra is not installed
(`make setup-sim`; CI installs it)."""

import numpy as np
import pytest

pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
from ctr_vla_ros.sim.expert import PASS_THROUGH, LiberoGoalExpert  # noqa: E402
from ctr_vla_ros.sim.libero_env import LiberoSimulation  # noqa: E402
from ctr_vla_ros.tools import record_demos  # noqa: E402


def test_expert_reaches_its_first_waypoint_smoothly():
    simulation = LiberoSimulation('libero_goal', 8, resolution=64)  # put the bowl on the plate
    try:
        observation = simulation.reset(0)
        expert = LiberoGoalExpert(simulation)
        actions = [expert.act(observation)]
        first_phase, first_waypoint = expert.phase, expert.waypoint
        assert first_phase == 'above the bowl'
        # Above the bowl's far rim, from its simulated pose: not the bowl's origin.
        bowl = simulation.object_position('akita_black_bowl_1')
        assert first_waypoint[2] > bowl[2] + 0.1 and 0.03 < first_waypoint[0] - bowl[0] < 0.06
        waypoint = first_waypoint
        for _ in range(40):
            observation = simulation.step(actions[-1])
            actions.append(expert.act(observation))
            if expert.phase != first_phase:
                break
            waypoint = expert.waypoint  # follows the bowl, which may still settle a little
        assert expert.phase == 'down to the bowl', f'still {expert.phase!r} after {len(actions)} steps'
        assert np.linalg.norm(observation.eef_position - waypoint) < PASS_THROUGH
        assert np.linalg.norm(waypoint - first_waypoint) < 0.005
        actions = np.array(actions)
        assert np.abs(actions[:, :6]).max() <= 0.7
        assert np.abs(np.diff(actions[:, :6], axis=0)).max() <= 0.1 + 1e-9, 'no jumps between consecutive actions'
        np.testing.assert_array_equal(actions[:, 6], -1.0)  # open on the way to the grasp
    finally:
        simulation.close()


def test_expert_knows_which_goals_it_can_do():
    assert LiberoGoalExpert.supports(['on', 'akita_black_bowl_1', 'plate_1'])
    assert LiberoGoalExpert.supports(['on', 'akita_black_bowl_1', 'wooden_cabinet_1_top_side'])
    assert LiberoGoalExpert.supports(['turnon', 'flat_stove_1'])
    assert not LiberoGoalExpert.supports(['open', 'wooden_cabinet_1_middle_region'])
    assert not LiberoGoalExpert.supports(['on', 'wine_bottle_1', 'wine_rack_1_top_region'])


def test_recorder_never_records_the_held_out_initial_states(tmp_path):
    assert record_demos.parse_init_states('0-3,7,40-41') == [0, 1, 2, 3, 7, 40, 41]
    with pytest.raises(ValueError, match='held out'):
        record_demos.record([8], [38, 39, 40], tmp_path, resolution=128, max_steps=10)
    assert not any(tmp_path.iterdir())
