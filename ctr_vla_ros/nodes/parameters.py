"""One declared, validated source for each node's parameters.

Each node lists its parameters once as `ParameterSpec`s (name, default, description, constraints). `declare`
declares them with descriptors (type, description, ranges, read-only) and returns the validated values; the YAML
files in config/ carry the same defaults (a test checks they agree)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ctr_vla_ros.ctr.config import CtrConfig


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    length: int | None = None  # for arrays: the exact number of elements

    def descriptor(self) -> ParameterDescriptor:
        constraints = []
        if self.choices:
            constraints.append(f'one of {list(self.choices)}')
        if self.length is not None:
            constraints.append(f'{self.length} elements')
        descriptor = ParameterDescriptor(name=self.name, description=self.description, read_only=True,
                                         additional_constraints=', '.join(constraints))
        if self.minimum is not None or self.maximum is not None:
            low = self.minimum if self.minimum is not None else -1e300
            high = self.maximum if self.maximum is not None else 1e300
            if isinstance(self.default, int) and not isinstance(self.default, bool):
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(min(high, 2**62)),
                                                         step=0)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                                      step=0.0)]
        return descriptor

    def validate(self, value: Any) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f'parameter {self.name}: {value!r} is not one of {list(self.choices)}')
        if self.length is not None and len(value) != self.length:
            raise ValueError(f'parameter {self.name}: expected {self.length} elements, got {len(value)}')
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if self.minimum is not None and item < self.minimum:
                    raise ValueError(f'parameter {self.name}: {item} is below {self.minimum}')
                if self.maximum is not None and item > self.maximum:
                    raise ValueError(f'parameter {self.name}: {item} is above {self.maximum}')


# Shared by several nodes: the `/**` section of config/ctr_vla.yaml sets them for every node that declares them.
CAMERA_TOPIC_PARAMETERS = [
    ParameterSpec('camera_topics', ['/camera/primary/image_raw', '/camera/wrist/image_raw'],
                  'camera image topics in model order (primary third-person view, wrist view)', length=2),
    ParameterSpec('camera_names', ['primary', 'wrist'], 'camera names in model order', length=2),
]
MODEL_VIEW_PARAMETERS = [
    ParameterSpec('rotate180', False, 'rotate camera images 180 degrees before the model'),
    ParameterSpec('center_crop', True, "the 90%-area centre crop of the authors' evaluation"),
]
POSE_TOPIC_PARAMETER = ParameterSpec('pose_topic', '/ee_pose',
                                     'end-effector pose in the base frame (geometry_msgs/PoseStamped)')
ROBOT_TOPIC_PARAMETERS = [
    ParameterSpec('instruction_topic', '/instruction',
                  'task instruction (std_msgs/String, latched or plain publisher)'),
    POSE_TOPIC_PARAMETER,
    ParameterSpec('gripper_topic', '/gripper/joint_states', 'gripper finger positions (sensor_msgs/JointState)'),
    ParameterSpec('gripper_joint_names', ['left_finger', 'right_finger'],
                  'the two finger joints in gripper_topic, in dataset order', length=2),
]
SHARED_PARAMETERS = CAMERA_TOPIC_PARAMETERS + MODEL_VIEW_PARAMETERS + ROBOT_TOPIC_PARAMETERS


def ctr_parameter_specs(prefix: str = 'ctr.') -> list[ParameterSpec]:
    """The CTR engine's settings as parameters (ctr.enabled, ctr.top_k, ...), defaults from CtrConfig."""
    descriptions = {
        'enabled': 'CTR on; off = plain full recompute every query', 'vision_reuse': 'reuse in the vision encoder',
        'llm_reuse': 'reuse visual K/V in the LLM', 'static_metric': 'gray_difference or rgb_cosine',
        'difference_threshold': 'static if mean abs grayscale difference (0..1) is below',
        'cosine_threshold': 'static if RGB cosine similarity is above (rgb_cosine metric)',
        'reference': "compare with the pixels a patch was last computed from ('patch') or the last query ('query')",
        'top_k': 'visual tokens forced to recompute by prompt (or action) attention',
        'attention_layer': 'LLM layer of the task-relevance attention probe (negative: from the end)',
        'relevance_queries': "whose attention ranks visual tokens: 'prompt' (the paper) or 'action' (the action head's "
                             'positions)',
        'max_reuse_per_image': 'cap on reused patches per image (0: none)',
        'keyframe_interval': 'recompute everything every N queries',
        'input_timeout': 'a gap between queries longer than this (s) forces a keyframe',
        'llm_reuse_start_layer': 'first LLM layer that keeps cached visual K/V',
        'llm_prune_layer': 'from this LLM layer on, reused visual tokens are pruned instead of cached, unless no input '
                           'changed since the keyframe (-1: never)',
        'precise_speed': 'precise mode: full recompute while the predicted chunk moves slower than this '
                         '(mean normalised translation; 0: never)',
        'precise_gripper_change': 'precise mode: full recompute while the predicted gripper command spans more than '
                                  'this within a chunk (0: never)',
        'precise_requery': 'precise mode: a reuse query that predicts a precise chunk is re-run with full recompute',
        'consistency_threshold': 'a reuse query whose chunk starts further than this (normalised translation) from '
                                 'where the last chunk ended is re-run with full recompute (0: never)',
        'action_reuse_static': 'action reuse: no model run, the last chunk again, when the mask reuses at least this '
                               'share of the visual tokens after two steady chunks (0: never)',
        'action_reuse_deviation': 'action reuse: the last two computed chunks are steady when they differ by at most '
                                  'this (mean absolute, normalised units)',
        'action_reuse_max': 'action reuse: at most this many queries in a row without a model run',
        'vision_threshold_scale': 'ablation: static-threshold scale on the vision side only',
        'llm_threshold_scale': 'ablation: static-threshold scale on the LLM side only',
        'row_bucket': 'pad recomputed rows to a multiple of this (static shapes; 1: exact counts)',
        'cuda_graphs': 'replay every padded shape as a CUDA graph (CUDA only, with row_bucket > 1)',
    }
    return [ParameterSpec(prefix + field.name, field.default, descriptions[field.name])
            for field in dataclasses.fields(CtrConfig)]


def declare(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter with its descriptor; return {name: validated value}. Raises ValueError."""
    values = {}
    for spec in specs:
        default = spec.default
        if isinstance(default, (list, tuple)) and not default:
            raise ValueError(f'parameter {spec.name}: give array parameters a non-empty default (typed)')
        parameter = node.declare_parameter(spec.name, default, spec.descriptor())
        value = parameter.value
        if parameter.type_ in (Parameter.Type.DOUBLE_ARRAY, Parameter.Type.STRING_ARRAY,
                               Parameter.Type.INTEGER_ARRAY, Parameter.Type.BOOL_ARRAY):
            value = list(value)
        spec.validate(value)
        values[spec.name] = value
    return values
