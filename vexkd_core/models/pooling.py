"""Pooling rows (points, frustum points) into BEV cells: the pillar max of the LiDAR encoder
and the Lift-Splat sum of the camera encoder.

Training pools with one scatter-reduce over all rows. An inference engine runs that
scatter slowly (ONNX Runtime's ScatterElements: one thread, ~12 ns an element, 40 ms of a
60 ms LiDAR graph) or wrongly (its ScatterND with reduction adds duplicate indices from
several threads at once). So the exported graph pools through a `PoolLayout`, computed
outside the graph from the cell of each row (no weights): each occupied cell's first
`SLOTS` rows are gathered into a (cells, SLOTS, C) block and reduced along the slots, the
cells are written with unique indices (no reduction, no race), and the few rows past
`SLOTS` in crowded cells are scatter-reduced on top. Padding slots repeat the cell's first
row for max and point at a zero row for sum, so the result is the scatter's exactly (up to
float summation order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SLOTS = 8  # rows per cell gathered into the dense block


@dataclass
class PoolLayout:
    gather: torch.Tensor  # (P, SLOTS) int64 row of each slot of each occupied cell
    cell: torch.Tensor  # (P,) int64 the occupied cells, each once
    extra_rows: torch.Tensor  # (E,) int64 rows past the first SLOTS of their cell
    extra_cell: torch.Tensor  # (E,) int64 their cells


def pool_layout(cell: torch.Tensor, cells: int, reduce: str) -> PoolLayout:
    """The layout of rows with flat cell index `cell` (M,); rows with cell >= `cells` (off the
    grid) are left out. `reduce`: max pads with the cell's first row, sum with row M (the
    zero row the pooling appends)."""
    rows = torch.nonzero(cell < cells).squeeze(1)
    order = rows[torch.argsort(cell[rows], stable=True)]
    sorted_cell = cell[order]
    occupied, counts = torch.unique_consecutive(sorted_cell, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=cell.device) - torch.repeat_interleave(starts, counts)
    owner = torch.repeat_interleave(torch.arange(len(occupied), device=cell.device), counts)
    first = rank < SLOTS
    if reduce == "max":
        gather = order[starts][:, None].repeat(1, SLOTS)
    elif reduce == "sum":
        gather = torch.full((len(occupied), SLOTS), len(cell), dtype=torch.long, device=cell.device)
    else:
        raise ValueError(f"reduce must be max or sum, not '{reduce}'")
    gather[owner[first], rank[first]] = order[first]
    return PoolLayout(gather, occupied, order[~first], sorted_cell[~first])


def pool(rows: torch.Tensor, where: torch.Tensor | PoolLayout, cells: int, reduce: str) -> torch.Tensor:
    """(cells, C): rows (M, C) max- or sum-pooled into their cells; empty cells 0. `where`:
    each row's cell (M,) (rows at `cells` or beyond are dropped), or its PoolLayout."""
    if isinstance(where, PoolLayout):
        return _pool_by_layout(rows, where, cells, reduce)
    out = torch.zeros(cells + 1, rows.shape[1], device=rows.device, dtype=rows.dtype)
    where = where.clamp(max=cells)
    if reduce == "max":  # the rows are ReLU outputs: max with the zeros is the max of the rows
        out = out.scatter_reduce(0, where[:, None].expand_as(rows), rows, reduce="amax", include_self=True)
    else:
        out = out.index_add(0, where, rows)
    return out[:-1]


def _pool_by_layout(rows: torch.Tensor, layout: PoolLayout, cells: int, reduce: str) -> torch.Tensor:
    out = torch.zeros(cells, rows.shape[1], device=rows.device, dtype=rows.dtype)
    if reduce == "max":
        out = out.index_put((layout.cell,), rows[layout.gather].amax(dim=1))
        extra = layout.extra_cell[:, None].expand(-1, rows.shape[1])
        return out.scatter_reduce(0, extra, rows[layout.extra_rows], reduce="amax", include_self=True)
    padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    out = out.index_put((layout.cell,), padded[layout.gather].sum(dim=1))
    return out.index_add(0, layout.extra_cell, rows[layout.extra_rows])
