"""Shared pieces of the benchmark scripts: machine description, matmul reference throughput, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path('benchmarks') / 'results'
DOCS_DIR = Path('docs')  # the figures the README shows


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'torch': torch.__version__, 'date': datetime.date.today().isoformat()}


def matmul_throughput(size: int = 4096, repeats: int = 5, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = 'cpu') -> float:
    """FLOP/s of a large square matmul on this machine, the reference for how well a model step uses it."""
    device = torch.device(device)
    left = torch.randn(size, size, dtype=dtype, device=device)
    right = torch.randn(size, size, dtype=dtype, device=device)

    def synchronize() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(3):
        left @ right
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        left @ right
        synchronize()
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(times)


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f'{name}.json'
    path.write_text(json.dumps(results, indent=2))
    return path


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
