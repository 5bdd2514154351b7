"""Shared test fixtures. Every ROS process a test starts stays on loopback, in a domain of its own."""

import itertools
import os
import random
from pathlib import Path


import pytest

# Set before anything imports rclpy: Kilted ignores ROS_LOCALHOST_ONLY, so the discovery range must be explicit.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

_first_domain = int(os.environ.get('ROS_DOMAIN_ID', random.randint(1, 100)))
_domain_offsets = itertools.count()


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> int:
    """A ROS domain id not used by any other test of this run, exported to this process and its children."""
    domain_id = 1 + (_first_domain + next(_domain_offsets)) % 100
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return domain_id


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-weight checkpoint in the official on-disk format, generated once per test run."""
    from ctr_vla_ros.model.random_checkpoint import write_random_checkpoint

    directory = tmp_path_factory.mktemp('checkpoints') / 'tiny'
    write_random_checkpoint(directory, size='tiny', seed=0)
    return directory


LIBERO_SEQUENCES = Path(__file__).resolve().parents[1] / 'data' / 'libero'


@pytest.fixture(scope='session')
def libero_sequence():
    """A recorded LIBERO query-cadence episode carried by the project (data/libero): agentview, wrist
    (20x256x256x3 uint8, upright), proprio8 (20x8), instruction."""
    from ctr_vla_ros.benchmarks.ctr import load_sequence
    return load_sequence(LIBERO_SEQUENCES / 'libero_spatial_t0_i0.npz')
