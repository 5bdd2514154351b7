"""Static shapes for the CTR step on a GPU: recomputed rows selected on the device, padded to a few row counts, and
each padded shape replayed as a CUDA graph.

A batch-1 OpenVLA-OFT query on a GPU is bound by kernel launches and host round trips, not by arithmetic, so reuse
that picks its rows with a data-dependent `nonzero` and runs a differently shaped model every query saves little
there. Here the rows to recompute are selected by a stable sort (computed rows first, in order) and cut to a
*bucket*: the row count rounded up to a multiple of `ctr.row_bucket`. The rows past the real count repeat the
first real one: a repeated row computes the same values as the row itself and writes them to the same cache slot,
so padding never changes a real row's output (tests compare the padded step with the exact one). The engine reads
the per-image row counts once per query, right after the mask, to choose the buckets; nothing else in the step
waits for the device until the actions are read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


def bucket_size(count: int, step: int, maximum: int) -> int:
    """`count` rows rounded up to a multiple of `step`, at most `maximum`; 0 stays 0 (nothing to compute)."""
    if count <= 0:
        return 0
    return min(-(-count // step) * step, maximum)


def bucket_sizes(step: int, maximum: int) -> list[int]:
    """Every bucket a selection of up to `maximum` rows can take (the graphs to capture)."""
    return sorted({bucket_size(count, step, maximum) for count in range(1, maximum + 1)})


def padded_rows(computed: torch.Tensor, bucket: int) -> torch.Tensor:
    """The indices of the True entries of `computed` (1-D bool), ascending, padded to `bucket` entries by repeating
    the first; on the tensor's device with a fixed output shape. With `bucket` equal to the count this is
    `computed.nonzero()`; the caller guarantees at least one True entry when `bucket` > 0."""
    order = torch.argsort((~computed).to(torch.int32), stable=True)[:bucket]  # computed rows first, in order
    count = computed.sum()
    return torch.where(torch.arange(bucket, device=computed.device) < count, order, order[:1])


class CudaGraphs:
    """One CUDA graph per key, captured on the first call and replayed afterwards.

    `function` reads and writes only tensors that live as long as the graphs (the engine's static buffers), and
    returns the tensors it produces; a replay refills those same tensors. Every graph shares one memory pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Each graph with its outputs and its function: the tensors the function holds must outlive the graph.
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, object, Callable[[], object]]] = {}
        self._pool = None

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, function: Callable[[], object]) -> object:
        if key not in self._graphs:
            self.capture(key, function)
        graph, outputs, _ = self._graphs[key]
        graph.replay()
        return outputs

    def capture(self, key: Hashable, function: Callable[[], object]) -> None:
        # Warm-up runs on a side stream first, as capture requires (lazy initialisation, cuBLAS workspaces).
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                function()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = function()
        self._pool = graph.pool()
        self._graphs[key] = (graph, outputs, function)
