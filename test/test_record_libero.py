"""The recording tool writes sequences in the format of data/libero/*.npz."""

import numpy as np
import pytest

pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
from ctr_vla_ros.tools import record_libero  # noqa: E402
from ctr_vla_ros.benchmarks.ctr import load_sequence  # noqa: E402

from conftest import LIBERO_SEQUENCES  # noqa: E402


def test_recorded_sequence_has_the_projects_format(tmp_path):
    output = tmp_path / 'recorded.npz'
    record_libero.main(['--suite', 'libero_spatial', '--task', '0', '--steps', '24', '--settle-steps', '2',
                        '--output', str(output)])
    recorded = np.load(output)
    assert recorded['agentview'].shape == (3, 256, 256, 3) and recorded['agentview'].dtype == np.uint8
    assert recorded['wrist'].shape == (3, 256, 256, 3)
    assert recorded['proprio8'].shape == (3, 8) and recorded['actions'].shape == (24, 7)
    assert recorded['query_steps'].tolist() == [0, 8, 16]
    assert np.abs(recorded['actions']).max() <= 1.0
    assert np.abs(recorded['actions'][:, :3]).max() > 0.1, 'the scripted controller moves the arm'
    assert load_sequence(output)['instruction'].startswith('pick up the black bowl')
    reference = np.load(LIBERO_SEQUENCES / 'libero_spatial_t0_i0.npz')
    for key in ('agentview', 'wrist', 'proprio8', 'actions', 'query_steps', 'instruction', 'suite', 'task_id',
                'init_state', 'render_res', 'control_freq', 'query_every', 'settle_steps'):
        assert key in recorded.files, key
        assert recorded[key].dtype.kind == reference[key].dtype.kind, key
    # Upright like the project's frames: the first recorded frame is close to the stored one of the same init.
    difference = np.abs(recorded['agentview'][0].astype(int) - reference['agentview'][0].astype(int)).mean()
    rotated = np.abs(recorded['agentview'][0][::-1, ::-1].astype(int) - reference['agentview'][0].astype(int))
    assert difference < rotated.mean()
