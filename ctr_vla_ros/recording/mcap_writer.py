"""Writes serialised ROS 2 messages into MCAP files with the `ros2` profile, `ros2msg` schemas and `cdr` message
encoding: what rosbag2 writes by default, readable by `ros2 bag`, Foxglove and the `mcap` libraries.

A recording is a series of files <directory>/<name>_<index>.mcap. A new file starts when the current one reaches
`max_bytes` or spans `max_duration` seconds of log time (0: no limit); with `max_files`, the oldest files are
deleted so that at most that many remain (a ring buffer for long runs). Every file is complete on its own: schemas,
channels and metadata are written to each."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from mcap.writer import CompressionType, Writer

from ctr_vla_ros.recording.message_definitions import message_definition

COMPRESSIONS = {'none': CompressionType.NONE, 'lz4': CompressionType.LZ4, 'zstd': CompressionType.ZSTD}
CHUNK_BYTES = 1 << 20  # a file ends within one chunk of max_bytes


@dataclasses.dataclass(frozen=True)
class RecordingLimits:
    max_bytes: int = 0  # per file; 0: no limit
    max_duration: float = 0.0  # seconds of log time per file; 0: no limit
    max_files: int = 0  # files kept, oldest deleted first; 0: keep all


class _OpenFile:
    def __init__(self, path: Path, compression: CompressionType) -> None:
        self.path = path
        self.stream = io.open(path, 'wb')
        self.writer = Writer(self.stream, chunk_size=CHUNK_BYTES, compression=compression)
        self.writer.start(profile='ros2', library='ctr_vla_ros')
        self.schema_ids: dict[str, int] = {}
        self.channel_ids: dict[str, int] = {}
        self.first_log_time: int | None = None

    def channel(self, topic: str, type_name: str) -> int:
        if topic not in self.channel_ids:
            if type_name not in self.schema_ids:
                self.schema_ids[type_name] = self.writer.register_schema(
                    type_name, 'ros2msg', message_definition(type_name).encode())
            self.channel_ids[topic] = self.writer.register_channel(topic, 'cdr', self.schema_ids[type_name])
        return self.channel_ids[topic]

    def close(self) -> None:
        self.writer.finish()
        self.stream.close()


class RecordingWriter:
    """Raw CDR messages in, rotating MCAP files out. Not thread-safe: call from one thread."""

    def __init__(self, directory: str | Path, name: str, limits: RecordingLimits = RecordingLimits(),
                 compression: str = 'zstd') -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f'compression must be one of {list(COMPRESSIONS)}, got {compression!r}')
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.limits = limits
        self.compression = COMPRESSIONS[compression]
        self.types: dict[str, str] = {}  # topic -> message type, e.g. 'sensor_msgs/msg/Image'
        self.metadata: dict[str, dict[str, str]] = {}
        self.files: list[Path] = []  # every file written, deleted ones included
        self.message_counts: dict[str, int] = {}
        self._file: _OpenFile | None = None

    def add_topic(self, topic: str, type_name: str) -> None:
        message_definition(type_name)  # fails here, not at the first message, if the definition is missing
        self.types[topic] = type_name

    def set_metadata(self, name: str, data: dict[str, str]) -> None:
        """Named key-value metadata, written to the current file and every later one."""
        self.metadata[name] = dict(data)
        if self._file is not None:
            self._file.writer.add_metadata(name, self.metadata[name])

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int | None = None) -> None:
        """One serialised message of a topic added with add_topic; times in nanoseconds."""
        file = self._file_for(log_time)
        file.writer.add_message(file.channel(topic, self.types[topic]), log_time, data,
                                log_time if publish_time is None else publish_time)
        self.message_counts[topic] = self.message_counts.get(topic, 0) + 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _file_for(self, log_time: int) -> _OpenFile:
        file, limits = self._file, self.limits
        if file is not None:
            too_big = limits.max_bytes and file.stream.tell() >= limits.max_bytes
            too_long = limits.max_duration and log_time - file.first_log_time >= limits.max_duration * 1e9
            if too_big or too_long:
                self.close()
                file = None
        if file is None:
            path = self.directory / f'{self.name}_{len(self.files)}.mcap'
            file = self._file = _OpenFile(path, self.compression)
            file.first_log_time = log_time
            self.files.append(path)
            for name, data in self.metadata.items():
                file.writer.add_metadata(name, data)
            if limits.max_files:
                for old in self.files[:-limits.max_files]:
                    old.unlink(missing_ok=True)
        return file
