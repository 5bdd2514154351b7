"""The results of one evaluation, resumable: a JSON with the settings, the paired summary of every configuration and
every episode (rewritten after each episode, atomically), and a gzip log of every query of every episode (one
JSON line per episode, appended), for the analysis of where configurations diverge. The in-process runner and the
ROS harness write the same files."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

from ctr_vla_ros.evaluation.configurations import Configuration
from ctr_vla_ros.evaluation.statistics import summarize
from ctr_vla_ros.benchmarks.measurement import machine_description


def read_query_log(path: Path) -> list[dict[str, Any]]:
    """The episodes of a query log, up to a member cut short by a killed run."""
    episodes = []
    if not path.is_file():
        return episodes
    try:
        with gzip.open(path, 'rt') as file:
            for line in file:
                episodes.append(json.loads(line))
    except (EOFError, OSError, zlib.error, json.JSONDecodeError):
        pass  # the rest was being written when the run stopped
    return episodes


def episode_record(configuration: str, task_id: int, start: str, instruction: str, success: bool, steps: int,
                   hold_steps: int, queries: list[dict[str, Any]], **details: Any) -> dict[str, Any]:
    """One episode as the results hold it, the same from the runner and from the ROS harness. Each query has at
    least `keyframe_reason`, `time` (s), `executed_flops`, `full_recompute_flops`, and `vision_reuse` and `llm_reuse`
    per camera; `details` (refusals, wall time) are kept as they are."""
    count = max(len(queries), 1)
    cameras = range(len(queries[0]['vision_reuse']) if queries else 0)
    return {
        'configuration': configuration, 'task_id': task_id, 'start': start, 'instruction': instruction,
        'success': success, 'steps': steps, 'hold_steps': hold_steps,
        'keyframes': sum(1 for query in queries if query['keyframe_reason']),
        'query_times': [round(query['time'], 6) for query in queries],
        'executed_flops': sum(query['executed_flops'] for query in queries),
        'full_recompute_flops': sum(query['full_recompute_flops'] for query in queries),
        'vision_reuse': [sum(query['vision_reuse'][camera] for query in queries) / count for camera in cameras],
        'llm_reuse': [sum(query['llm_reuse'][camera] for query in queries) / count for camera in cameras],
        **details, 'queries': queries,
    }


def as_stored(value: Any) -> Any:
    """A value as the results file holds it (tuples become lists)."""
    return json.loads(json.dumps(value))


class Results:
    """The results JSON and the query log of one evaluation, resumable, and open to more configurations: a run with
    the same episodes (every setting but the configurations) keeps the episodes of every configuration whose
    definition it shares, and of those it does not ask for; a configuration defined differently starts over.
    A stored definition is read as the code reads it today, so a setting added since takes its default (the
    behaviour of the runs that wrote the file) instead of making every configuration start over."""

    def __init__(self, output: Path, settings: dict[str, Any]) -> None:
        self.output = output
        self.query_log = output.with_name(output.stem + '_queries.jsonl.gz')
        settings = as_stored(settings)
        previous = json.loads(output.read_text()) if output.is_file() else {}
        old = previous.get('settings', {})
        old_configs = {name: as_stored(Configuration.from_json(definition).to_json())
                       for name, definition in old.get('configurations', {}).items()}
        asked = settings['configurations']
        if {key: value for key, value in old.items() if key != 'configurations'} == \
                {key: value for key, value in settings.items() if key != 'configurations'}:
            kept = {name: config for name, config in old_configs.items() if asked.get(name, config) == config}
        else:
            kept = {}
        self.settings = {**settings, 'configurations': {**kept, **asked}}
        self.configs = list(dict.fromkeys(['off', *asked, *kept]))
        self.episodes: list[dict[str, Any]] = [episode for episode in previous.get('episodes', [])
                                               if episode['configuration'] in kept]
        done = self.done
        logged = [episode for episode in read_query_log(self.query_log) if self.key(episode) in done]
        output.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(self.query_log, 'wt') as file:  # rewritten without what the results do not hold
            for episode in logged:
                file.write(json.dumps(episode) + '\n')

    @staticmethod
    def key(episode: dict[str, Any]) -> tuple[str, int, str]:
        return episode['configuration'], episode['task_id'], episode['start']

    @property
    def done(self) -> set[tuple[str, int, str]]:
        return {self.key(episode) for episode in self.episodes}

    def add(self, episode: dict[str, Any]) -> None:
        with gzip.open(self.query_log, 'at') as file:
            file.write(json.dumps({key: episode[key] for key in ('configuration', 'task_id', 'start', 'success',
                                                                 'queries')}) + '\n')
        self.episodes.append({key: value for key, value in episode.items() if key != 'queries'})
        self.write()

    def summaries(self) -> dict[str, dict[str, Any]]:
        by_config = {name: [episode for episode in self.episodes if episode['configuration'] == name]
                     for name in self.configs}
        return {name: summarize(items, by_config['off'] if name != 'off' else None)
                for name, items in by_config.items() if items}

    def write(self) -> None:
        results = {'settings': self.settings, 'machine': machine_description(), 'configurations': self.summaries(),
                   'episodes': sorted(self.episodes, key=lambda episode: (episode['configuration'],
                                                                          episode['task_id'], episode['start']))}
        temporary = self.output.with_suffix('.json.tmp')
        temporary.write_text(json.dumps(results, indent=1))
        temporary.replace(self.output)  # never half a file, whenever the run is stopped
