"""Success rates and paired comparisons for closed-loop evaluations: every configuration runs exactly the episodes
`off` runs, so each configuration is compared with `off` episode by episode (McNemar's exact test on the discordant
pairs) rather than as two independent samples."""

from __future__ import annotations

import math
import statistics
from typing import Any


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a success rate (Wilson score interval: sound at 0% and 100% and for few trials)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    center = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half_width = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, center - half_width), min(1.0, center + half_width)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the probability, if both were equally good, of discordant pairs at least as
    uneven as these (a binomial test of `only_first` out of all discordant pairs at p = 1/2)."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    smaller = min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def episode_key(episode: dict[str, Any]) -> tuple[int, str]:
    return episode['task_id'], episode['start']


def summarize(episodes: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One configuration's episodes; with `baseline` (the same episodes with CTR off), the paired comparison and the
    speed-up. Pairs are counted over the episodes both have run."""
    successes = sum(episode['success'] for episode in episodes)
    low, high = wilson_interval(successes, len(episodes))
    times = [time for episode in episodes for time in episode['query_times']]
    executed = sum(episode['executed_flops'] for episode in episodes)
    full = sum(episode['full_recompute_flops'] for episode in episodes)
    queries = sum(len(episode['query_times']) for episode in episodes)
    cameras = len(episodes[0]['vision_reuse']) if episodes else 0
    summary: dict[str, Any] = {
        'episodes': len(episodes), 'successes': successes,
        'success_rate': successes / len(episodes) if episodes else math.nan, 'success_ci95': [low, high],
        'per_task': {str(task): [sum(episode['success'] for episode in episodes if episode['task_id'] == task),
                                 sum(1 for episode in episodes if episode['task_id'] == task)]
                     for task in sorted({episode['task_id'] for episode in episodes})},
        'queries': queries,
        'median_step_s': statistics.median(times) if times else math.nan,
        'flops_reduction': 1 - executed / full if full else 0.0,
        # Per camera, weighted by each episode's queries.
        'vision_reuse': [sum(episode['vision_reuse'][camera] * len(episode['query_times']) for episode in episodes)
                         / max(queries, 1) for camera in range(cameras)],
        'llm_reuse': [sum(episode['llm_reuse'][camera] * len(episode['query_times']) for episode in episodes)
                      / max(queries, 1) for camera in range(cameras)],
        'median_episode_steps': statistics.median(episode['steps'] for episode in episodes) if episodes else 0,
    }
    if baseline is not None:
        base = {episode_key(episode): episode for episode in baseline}
        pairs = [(base[episode_key(episode)], episode) for episode in episodes if episode_key(episode) in base]
        only_baseline = sum(1 for off, this in pairs if off['success'] and not this['success'])
        only_this = sum(1 for off, this in pairs if this['success'] and not off['success'])
        base_times = [time for off, _ in pairs for time in off['query_times']]
        paired_times = [time for _, this in pairs for time in this['query_times']]
        summary.update({
            'paired_episodes': len(pairs), 'discordant': {'off_only': only_baseline, 'config_only': only_this},
            'mcnemar_p': mcnemar_exact(only_baseline, only_this),
            'speedup_vs_off': (statistics.median(base_times) / statistics.median(paired_times)
                               if base_times and paired_times else None),
        })
    return summary


KEPT_SUCCESS_MAX_DROP = 0.03  # success at most this far below `off` (a fraction of the paired episodes)
KEPT_SUCCESS_MIN_P = 0.2  # and McNemar's p against `off` at least this


def keeps_success(summary: dict[str, Any]) -> bool:
    """Whether a configuration's success is indistinguishable from `off` on their paired episodes: at most
    KEPT_SUCCESS_MAX_DROP fewer successes and McNemar p >= KEPT_SUCCESS_MIN_P (the reuse-rule goal's test)."""
    if not summary.get('paired_episodes'):
        return False
    discordant = summary['discordant']
    drop = (discordant['off_only'] - discordant['config_only']) / summary['paired_episodes']
    return drop <= KEPT_SUCCESS_MAX_DROP and summary['mcnemar_p'] >= KEPT_SUCCESS_MIN_P


def markdown_table(configurations: dict[str, dict[str, Any]]) -> list[str]:
    """Per configuration: success with its CI and per task, the paired comparison with `off`, and the cost."""
    tasks = sorted({task for summary in configurations.values() for task in summary['per_task']}, key=int)
    lines = ['| configuration | success (95% CI) | ' + ' | '.join(f'task {task}' for task in tasks)
             + ' | off only / config only | McNemar p | FLOPs saved | reuse, vision (primary / wrist) | reuse, LLM '
             '(primary / wrist) | median query | speed-up |',
             '|---|---|' + '---|' * len(tasks) + '---|---|---|---|---|---|---|']
    for name, summary in configurations.items():
        low, high = summary['success_ci95']
        per_task = ' | '.join('{}/{}'.format(*summary['per_task'].get(task, (0, 0))) for task in tasks)
        if 'discordant' in summary and name != 'off':
            discordant = f'{summary["discordant"]["off_only"]} / {summary["discordant"]["config_only"]}'
            p_value = f'{summary["mcnemar_p"]:.3g}'
            speedup = f'{summary["speedup_vs_off"]:.2f}x' if summary['speedup_vs_off'] else '-'
        else:
            discordant, p_value, speedup = '-', '-', '1.00x'
        reuse = ' | '.join(' / '.join(f'{value:.0%}' for value in summary[side]) for side in ('vision_reuse', 'llm_reuse'))
        lines.append(f'| `{name}` | {summary["successes"]}/{summary["episodes"]} = {summary["success_rate"]:.0%} '
                     f'({low:.0%}-{high:.0%}) | {per_task} | {discordant} | {p_value} | '
                     f'{summary["flops_reduction"]:.1%} | {reuse} | {summary["median_step_s"] * 1e3:.1f} ms | '
                     f'{speedup} |')
    return lines
