"""Shared test fixtures. Every ROS process a test starts stays on loopback, in a domain of its own."""

import itertools
import os
import random

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
