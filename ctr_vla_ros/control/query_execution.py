"""One query the supervisor asked for, computed and handed back: the same steps in the policy node's inference thread
and in the in-process evaluation runner, so the runner's episodes are the node's."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ctr_vla_ros.control.chunk_execution import ActionConvention
from ctr_vla_ros.control.supervisor import Query, Supervisor
from ctr_vla_ros.policy import InputError, Prediction, VlaPolicy


@dataclasses.dataclass(frozen=True)
class QueryOutcome:
    prediction: Prediction | None  # None: refused or failed
    deltas: np.ndarray | None  # (chunk, 7) m, rad, gripper command, before the clamps
    chunk_id: int | None  # the queued chunk's id; None: no chunk (refused, failed, or invalidated meanwhile)
    latency: float  # s, the whole predict
    refusal: str = ''  # an input the policy refused: motion waits for the next query
    model_error: str = ''  # the model failed on valid inputs: the supervisor faults (STOP until enable or reset)


def run_query(policy: VlaPolicy, convention: ActionConvention, supervisor: Supervisor, query: Query) -> QueryOutcome:
    """Reset the CTR engine if the query says so, predict from the query's inputs, and queue the chunk (or report
    the failure) with the supervisor."""
    if query.engine_reset:
        policy.engine.reset(query.engine_reset)
    started = time.perf_counter()
    try:
        prediction = policy.predict([rgb for rgb, _ in query.frames.frames], query.state, query.instruction,
                                    timestamp=query.frames.stamp)
    except InputError as error:
        supervisor.fail_query(str(error), model_fault=False)
        return QueryOutcome(None, None, None, time.perf_counter() - started, refusal=str(error))
    except (FloatingPointError, RuntimeError, ValueError) as error:
        supervisor.fail_query(str(error), model_fault=True)
        return QueryOutcome(None, None, None, time.perf_counter() - started, model_error=str(error))
    latency = time.perf_counter() - started
    deltas = convention.to_deltas(prediction.actions)
    return QueryOutcome(prediction, deltas, supervisor.finish_query(query, deltas), latency)
