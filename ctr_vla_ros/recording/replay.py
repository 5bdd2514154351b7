"""Recordings as model queries, and their replay through the policy with any CTR settings.

Two kinds of recording:
- a recording of the policy node (`ctr_vla_recorder`): every ActionChunk names the camera frames (by stamp), the
  robot state and the instruction it was computed from, and its CtrStats tell where the node reset the CTR engine.
  Replayed with the recorded checkpoint and settings, the queries reproduce the recorded actions. Replay starts at
  the first recorded keyframe: before it, the node's caches held states from before the recording.
- a recording of inputs only (cameras, `/robot_state`, instruction; e.g. a converted LIBERO sequence): a query every
  `query_every`-th primary frame, with the other cameras' frames of the same stamp and the newest state and
  instruction.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from ctr_vla_ros.control.camera_image import image_to_rgb
from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.policy import VlaPolicy

POLICY_METADATA = 'ctr_vla_policy'  # the policy node's parameters, values as JSON
RECORDING_METADATA = 'ctr_vla_recording'  # how the file was made, values as JSON
ACTION_CHUNK_TYPE = 'ctr_vla_ros_msgs/msg/ActionChunk'
CTR_STATS_TYPE = 'ctr_vla_ros_msgs/msg/CtrStats'
FRAMES_KEPT = 200  # per camera: frames older than this many are gone when their chunk arrives
STATS_WAIT = 4  # chunks: how long a chunk waits for its CtrStats before it is replayed without them


class RecordingError(ValueError):
    """The recording cannot be replayed; the message says why."""


@dataclasses.dataclass
class RecordedQuery:
    index: int  # the recorded chunk_id, or the query's position in an inputs-only recording
    timestamp: float  # the primary camera frame's stamp, seconds
    images: list[np.ndarray]  # RGB uint8, in model order
    state: np.ndarray
    instruction: str
    reset_reason: str | None  # reset the CTR engine with this keyframe reason before the query (as the node did)
    recorded_normalized_actions: np.ndarray | None  # what the node computed, when it was recorded


@dataclasses.dataclass
class ReplayedQuery:
    index: int
    normalized_actions: np.ndarray
    executed_flops: float
    full_recompute_flops: float
    time: float  # the engine's stages, preprocessing included, seconds
    keyframe: bool
    vision_reuse: float  # mean over cameras
    llm_reuse: float


@dataclasses.dataclass
class Recording:
    paths: list[Path]
    metadata: dict[str, dict[str, Any]]
    topics: dict[str, str]  # topic -> message type
    message_counts: dict[str, int]

    @property
    def policy_settings(self) -> dict[str, Any]:
        return self.metadata.get(POLICY_METADATA, {})

    @property
    def ctr_config(self) -> CtrConfig | None:
        """The CTR settings the recorded policy ran with; None when the recording does not carry them."""
        settings = self.policy_settings
        return CtrConfig.from_parameters(settings) if any(name.startswith('ctr.') for name in settings) else None

    @property
    def has_chunks(self) -> bool:
        return ACTION_CHUNK_TYPE in self.topics.values()

    def topic_of_type(self, type_name: str) -> str | None:
        return next((topic for topic, kind in self.topics.items() if kind == type_name), None)


def open_recording(paths: Sequence[str | Path]) -> Recording:
    """The files of one recording, in order (a rotated recording's <name>_0.mcap, <name>_1.mcap, ...)."""
    paths = [Path(path) for path in paths]
    metadata: dict[str, dict[str, Any]] = {}
    topics: dict[str, str] = {}
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        with open(path, 'rb') as stream:
            reader = make_reader(stream)
            for record in reader.iter_metadata():
                ours = record.name in (POLICY_METADATA, RECORDING_METADATA)  # others (rosbag2's) are not JSON
                metadata.setdefault(record.name, {}).update(
                    {key: json.loads(value) if ours else value for key, value in record.metadata.items()})
            summary = reader.get_summary()
            if summary is None:
                raise RecordingError(f'{path}: no summary section (the recording was not closed properly)')
            for channel_id, channel in summary.channels.items():
                topics[channel.topic] = summary.schemas[channel.schema_id].name
                counts[channel.topic] += summary.statistics.channel_message_counts.get(channel_id, 0)
    return Recording(paths, metadata, topics, dict(counts))


def _messages(recording: Recording, topics: set[str]) -> Iterator[tuple[str, Any, int]]:
    for path in recording.paths:
        with open(path, 'rb') as stream:
            reader = make_reader(stream, decoder_factories=[DecoderFactory()])
            for _, channel, message, decoded in reader.iter_decoded_messages(topics=sorted(topics),
                                                                                log_time_order=True):
                yield channel.topic, decoded, message.log_time


def _stamp_ns(stamp: Any) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class _FrameBuffer:
    """The newest frames of each camera topic, by stamp; decoded to RGB only when a query uses them."""

    def __init__(self, camera_topics: Sequence[str]) -> None:
        self.frames = {topic: collections.OrderedDict() for topic in camera_topics}

    def add(self, topic: str, message: Any) -> int:
        frames = self.frames[topic]
        stamp = _stamp_ns(message.header.stamp)
        frames[stamp] = message
        while len(frames) > FRAMES_KEPT:
            frames.popitem(last=False)
        return stamp

    def all_newer_than(self, stamp: int) -> bool:
        return all(frames and next(reversed(frames)) > stamp for frames in self.frames.values())

    def images(self, stamps: Sequence[int]) -> list[np.ndarray] | None:
        messages = [frames.get(stamp) for frames, stamp in zip(self.frames.values(), stamps)]
        return None if any(message is None for message in messages) else [image_to_rgb(m) for m in messages]


def recorded_queries(recording: Recording, camera_topics: Sequence[str] | None = None,
                     query_every: int | None = None) -> Iterator[RecordedQuery]:
    """The recording's model queries in order. camera_topics (in model order) and, for an inputs-only recording,
    query_every, the state topic and the instruction topic default to what the recording's metadata says."""
    made = recording.metadata.get(RECORDING_METADATA, {})
    camera_topics = list(camera_topics or made.get('camera_topics') or [])
    if not camera_topics:
        raise RecordingError('the recording does not say which topics are the cameras (it was not made by '
                             'ctr_vla_recorder or ctr-vla-to-mcap): give the camera topics')
    missing = [topic for topic in camera_topics if topic not in recording.topics]
    if missing:
        raise RecordingError(f'camera topics {missing} are not in the recording (it has {sorted(recording.topics)})')
    if recording.has_chunks:
        yield from _node_queries(recording, camera_topics)
    else:
        yield from _input_queries(recording, camera_topics, made.get('state_topic', '/robot_state'),
                                  made.get('instruction_topic', '/instruction'),
                                  query_every or made.get('query_every', 1))


def _node_queries(recording: Recording, camera_topics: list[str]) -> Iterator[RecordedQuery]:
    chunk_topic = recording.topic_of_type(ACTION_CHUNK_TYPE)
    stats_topic = recording.topic_of_type(CTR_STATS_TYPE)
    frames = _FrameBuffer(camera_topics)
    stats: dict[int, Any] = {}
    pending: collections.deque[Any] = collections.deque()
    started = False
    reset_count = None

    def finish(chunk: Any) -> RecordedQuery | None:
        nonlocal started, reset_count
        chunk_stats = stats.pop(chunk.chunk_id, None)
        reset_reason = None
        if chunk_stats is not None:
            if not started and not chunk_stats.keyframe:
                return None  # the node's caches at this query predate the recording
            if not started or chunk_stats.reset_count != reset_count:
                reset_reason = chunk_stats.keyframe_reason
            reset_count = chunk_stats.reset_count
        images = frames.images([_stamp_ns(stamp) for stamp in chunk.camera_stamps])
        if images is None:
            return None
        started = True
        return RecordedQuery(
            index=chunk.chunk_id, timestamp=_stamp_ns(chunk.header.stamp) * 1e-9, images=images,
            state=np.array(chunk.proprio, dtype=np.float64), instruction=chunk.instruction,
            reset_reason=reset_reason, recorded_normalized_actions=np.array(
                chunk.normalized_actions, dtype=np.float64).reshape(chunk.horizon, chunk.action_dim))

    topics = set(camera_topics) | {chunk_topic} | ({stats_topic} if stats_topic else set())
    for topic, message, _ in _messages(recording, topics):
        if topic == chunk_topic:
            if len(message.camera_stamps) != len(camera_topics):
                raise RecordingError(f'chunk {message.chunk_id} names {len(message.camera_stamps)} camera frames, '
                                     f'expected {len(camera_topics)} (a recording made before ActionChunk carried '
                                     'its inputs cannot be replayed)')
            pending.append(message)
        elif topic == stats_topic:
            stats[message.query_index] = message
        else:
            frames.add(topic, message)
        while pending and (pending[0].chunk_id in stats or len(pending) > STATS_WAIT or not stats_topic):
            if (query := finish(pending.popleft())) is not None:
                yield query
    while pending:
        if (query := finish(pending.popleft())) is not None:
            yield query


def _input_queries(recording: Recording, camera_topics: list[str], state_topic: str, instruction_topic: str,
                   query_every: int) -> Iterator[RecordedQuery]:
    if state_topic not in recording.topics:
        raise RecordingError(f'an inputs-only recording needs the robot state on {state_topic} '
                             '(std_msgs/Float64MultiArray)')
    frames = _FrameBuffer(camera_topics)
    primary_stamps: list[int] = []  # primary frames chosen for a query, waiting for the other cameras' frames
    state, instruction = None, ''
    primary_count = 0
    index = 0
    for topic, message, _ in _messages(recording, set(camera_topics) | {state_topic, instruction_topic}):
        if topic == state_topic:
            state = np.array(message.data, dtype=np.float64)
        elif topic == instruction_topic:
            instruction = message.data
        else:
            stamp = frames.add(topic, message)
            if topic == camera_topics[0]:
                if primary_count % query_every == 0:
                    primary_stamps.append(stamp)
                primary_count += 1
        while primary_stamps and state is not None and instruction:
            stamp = primary_stamps[0]
            images = frames.images([stamp] * len(camera_topics))
            if images is None:
                if frames.all_newer_than(stamp):
                    primary_stamps.pop(0)  # a camera skipped this stamp: no query from it
                    continue
                break
            primary_stamps.pop(0)
            yield RecordedQuery(index=index, timestamp=stamp * 1e-9, images=images, state=state,
                                instruction=instruction, reset_reason='first_query' if index == 0 else None,
                                recorded_normalized_actions=None)
            index += 1


def _run(policy: VlaPolicy, query: RecordedQuery) -> ReplayedQuery:
    if query.reset_reason:
        policy.engine.reset(query.reset_reason)
    started = time.perf_counter()
    prediction = policy.predict(query.images, query.state, query.instruction, timestamp=query.timestamp)
    elapsed = time.perf_counter() - started
    report = prediction.report
    return ReplayedQuery(
        index=query.index, normalized_actions=prediction.normalized_actions, executed_flops=report.flops.total,
        full_recompute_flops=report.full_recompute_flops.total, time=elapsed, keyframe=report.keyframe,
        vision_reuse=float(report.vision_reuse.mean()), llm_reuse=float(report.llm_reuse.mean()))


def replay(policies: Sequence[VlaPolicy],
           queries: Iterable[RecordedQuery]) -> Iterator[tuple[RecordedQuery, list[ReplayedQuery]]]:
    """Each recorded query through each policy in turn (so all see the same machine conditions), resetting the CTR
    engines where the node did."""
    for query in queries:
        yield query, [_run(policy, query) for policy in policies]
