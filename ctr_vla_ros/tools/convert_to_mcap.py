"""LIBERO data as recordings: the same topics and messages the simulation publishes, in the MCAP format the
recorder writes, so `ctr-vla-replay` and `ctr-vla-sweep` take them like a recording of a robot.

    ctr-vla-to-mcap data/libero/*.npz --output recordings/
    ctr-vla-to-mcap demos/turn_on_the_stove_demo.hdf5 --demos 0 1 --output recordings/

A query-cadence sequence (.npz, data/libero/) becomes <name>.mcap with one frame pair per model query; a LIBERO
demonstration file (.hdf5) becomes <name>_<N>.mcap per demonstration (turn_on_the_stove_demo_0.mcap), with a frame
pair every control step (20 Hz) and a model query every 8th (the release's chunk length). Topics: both cameras
(rgb8, upright), /robot_state (the 8-D LIBERO state) and the instruction (once, at the start); stamps are the
episode's time from 0.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ctr_vla_ros.data.libero_hdf5 import DemoFileReader
from ctr_vla_ros.recording.mcap_writer import RecordingWriter
from ctr_vla_ros.recording.message_definitions import cdr_encoder
from ctr_vla_ros.recording.replay import RECORDING_METADATA

CAMERA_TOPICS = ('/camera/primary/image_raw', '/camera/wrist/image_raw')
CAMERA_FRAMES = ('agentview_camera', 'wrist_camera')
STATE_TOPIC = '/robot_state'
INSTRUCTION_TOPIC = '/instruction'
CONTROL_PERIOD = 0.05  # s: LIBERO's 20 Hz
DEMO_QUERY_EVERY = 8
FRAME_LAG_NS = 1000


def _image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> dict:
    height, width, _ = rgb.shape
    return {'header': {'stamp': {'sec': stamp_ns // 1_000_000_000, 'nanosec': stamp_ns % 1_000_000_000},
                       'frame_id': frame_id},
            'height': height, 'width': width, 'encoding': 'rgb8', 'is_bigendian': 0, 'step': width * 3,
            'data': np.ascontiguousarray(rgb).tobytes()}


def write_episode(path: Path, instruction: str, frames: Iterator[tuple[float, np.ndarray, np.ndarray, np.ndarray]],
                  query_every: int, source: str) -> Path:
    """frames: (time s, primary RGB, wrist RGB, 8-D state) per step, upright images."""
    writer = RecordingWriter(path.parent, path.stem)
    writer.set_metadata(RECORDING_METADATA, {
        'source': json.dumps(source), 'query_every': json.dumps(query_every),
        'camera_topics': json.dumps(list(CAMERA_TOPICS)), 'instruction_topic': json.dumps(INSTRUCTION_TOPIC),
        'state_topic': json.dumps(STATE_TOPIC)})
    writer.add_topic(INSTRUCTION_TOPIC, 'std_msgs/msg/String')
    writer.add_topic(STATE_TOPIC, 'std_msgs/msg/Float64MultiArray')
    for topic in CAMERA_TOPICS:
        writer.add_topic(topic, 'sensor_msgs/msg/Image')
    encode_image, encode_state = cdr_encoder('sensor_msgs/msg/Image'), cdr_encoder('std_msgs/msg/Float64MultiArray')
    writer.write(INSTRUCTION_TOPIC, cdr_encoder('std_msgs/msg/String')({'data': instruction}), 0)
    for seconds, primary, wrist, state in frames:
        stamp = round(seconds * 1e9)
        # The state is logged just before the frames of its step, so the step's query (formed when its last frame
        # arrives, with the newest state, as the node does) takes the state of the same step.
        writer.write(STATE_TOPIC, encode_state({'layout': {'dim': [], 'data_offset': 0},
                                                'data': np.asarray(state, dtype=np.float64).tolist()}), stamp)
        for topic, frame_id, rgb in zip(CAMERA_TOPICS, CAMERA_FRAMES, (primary, wrist)):
            writer.write(topic, encode_image(_image(rgb, stamp, frame_id)), stamp + FRAME_LAG_NS)
    writer.close()
    # A single-file recording keeps the plain name.
    return writer.files[0].rename(path)


def convert_sequence(source: Path, output: Path) -> list[Path]:
    data = np.load(source)
    period = 1.0 / int(data['control_freq'])
    frames = ((int(step) * period, primary, wrist, state) for step, primary, wrist, state in
              zip(data['query_steps'], data['agentview'], data['wrist'], data['proprio8']))
    return [write_episode(output / f'{source.stem}.mcap', str(data['instruction']), frames, 1, str(source))]


def convert_demos(source: Path, output: Path, demo_indices: list[int] | None) -> list[Path]:
    paths = []
    with DemoFileReader(source) as reader:
        for index in demo_indices if demo_indices is not None else range(len(reader)):
            demo = reader.read(reader.demo_names[index])
            # LIBERO renders upside down; the simulation node (and a real camera) publishes upright images.
            # A demonstration recorded with a frame stride has the frames of every stride-th step only (a divisor
            # of the chunk): the cameras publish those, the query every chunk stays where it is.
            frames = ((step * CONTROL_PERIOD, demo.agentview_rgb[frame, ::-1, ::-1],
                       demo.eye_in_hand_rgb[frame, ::-1, ::-1],
                       np.concatenate([demo.ee_states[step], demo.gripper_states[step]]))
                      for frame, step in enumerate(demo.image_steps()))
            paths.append(write_episode(output / f'{source.stem}_{index}.mcap', reader.instruction, frames,
                                       max(1, DEMO_QUERY_EVERY // demo.frame_stride),
                                       f'{source}:{reader.demo_names[index]}'))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sources', type=Path, nargs='+', help='.npz query sequences or .hdf5 demonstration files')
    parser.add_argument('--output', type=Path, required=True, help='directory for the .mcap files')
    parser.add_argument('--demos', type=int, nargs='+', help='demonstration indices of .hdf5 files (default: all)')
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for source in args.sources:
        if source.suffix == '.npz':
            written = convert_sequence(source, args.output)
        elif source.suffix in ('.hdf5', '.h5'):
            written = convert_demos(source, args.output, args.demos)
        else:
            parser.error(f'{source}: expected a .npz sequence or a .hdf5 demonstration file')
        for path in written:
            print(f'{source} -> {path} ({path.stat().st_size / 1e6:.1f} MB)')


if __name__ == '__main__':
    main()
