"""Pooling rows (points, frustum points) into BEV cells: the pillar max of the LiDAR encoder
and the Lift-Splat sum of the camera encoder.

Training pools with one scatter-reduce over all rows. An inference engine runs that
scatter slowly (ONNX Runtime's ScatterElements: one thread, ~12 ns an element) or wrongly
(its ScatterND with reduction adds duplicate indices from several threads at once). So the
exported graph pools through a `PoolLayout`, computed outside the graph from the cell of
each row (no weights): the rows are sorted by cell and each occupied cell's rows are
gathered into a dense block as wide as the narrowest of `WIDTHS` that holds them all, then
reduced along the block; every cell is written once (unique indices: no reduction, no race).

How many rows a cell holds is heavy-tailed: on a `nuscenes`-preset frame of 10 accumulated
sweeps half the pillars hold 11-13 points, one in a hundred 600-900, and the pillars at the
ego's feet thousands; a frustum cell 19 at the median, 330 at p99, up to ~1,900. One block
width would either pad most cells many times over or leave most rows to a scatter (a width
of 8 left 87-90 % of the points and 80 % of the frustum rows to it). Widths a factor of 4
apart pad a cell at most 4x (the sorted rows fill 1.5-1.7x as many slots on those frames).
A cell with more rows than the widest block is cut into chunks of that width; each chunk is
reduced as a block row and only the chunks' results (a few per crowded cell, not its rows)
are scatter-reduced into their cells.

Padding slots repeat a row of the same cell for max and point at a zero row for sum, so the
result is the scatter's exactly (up to float summation order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Block widths, each 4x the last: a cell's rows fill at least a quarter of its block (one
# row: all of it). Cells past the last width are chunked (see the module docstring).
WIDTHS = (1, 4, 16, 64, 256)


@dataclass
class PoolLayout:
    """Where each row of a pooling goes in the dense blocks. gathers[i] / cells[i]: the cells
    whose rows fit WIDTHS[i] and not the width before, (K_i, WIDTHS[i]) rows and (K_i,) cells;
    chunk_gather / chunk_cell: the cells past the widest block, in chunks of its width (a
    cell repeats once per chunk)."""
    gathers: tuple[torch.Tensor, ...]
    cells: tuple[torch.Tensor, ...]
    chunk_gather: torch.Tensor
    chunk_cell: torch.Tensor

    def parts(self) -> dict[str, torch.Tensor]:
        """The layout's tensors by PARTS name (the exported graph's inputs)."""
        named = {}
        for width, gather, cell in zip(WIDTHS, self.gathers, self.cells):
            named.update({f"gather{width}": gather, f"cell{width}": cell})
        return {**named, "chunk_gather": self.chunk_gather, "chunk_cell": self.chunk_cell}

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor]) -> PoolLayout:
        return cls(tuple(parts[f"gather{width}"] for width in WIDTHS), tuple(parts[f"cell{width}"] for width in WIDTHS),
                   parts["chunk_gather"], parts["chunk_cell"])

    def chunked_rows(self) -> int:
        """Block rows whose results are scatter-reduced (the only scatter left)."""
        return len(self.chunk_cell)


# The layout's tensors by name (PoolLayout.parts), each with what its first dimension counts.
PARTS = {**{f"{kind}{width}": f"cells{width}" for width in WIDTHS for kind in ("gather", "cell")},
         "chunk_gather": "chunks", "chunk_cell": "chunks"}


def pool_layout(cell: torch.Tensor, cells: int, reduce: str) -> PoolLayout:
    """The layout of rows with flat cell index `cell` (M,); rows with cell >= `cells` (off the
    grid) are left out. `reduce`: max pads with a row of the same cell, sum with row M (the
    zero row the pooling appends)."""
    if reduce not in ("max", "sum"):
        raise ValueError(f"reduce must be max or sum, not '{reduce}'")
    device, widest = cell.device, WIDTHS[-1]
    if bool((cell < cells).all()):  # pillar_inputs has dropped the points off the grid
        order = torch.argsort(cell, stable=True)
    else:
        rows = torch.nonzero(cell < cells).squeeze(1)
        order = rows[torch.argsort(cell[rows], stable=True)]
    # index_select and take below rather than [] indexing: the same gathers at half the cost
    # for 1-D indices, and a node computes this layout on every frame.
    occupied, counts = torch.unique_consecutive(cell.index_select(0, order), return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    # Each cell in chunks of at most `widest` rows (one chunk for all but the crowded cells).
    chunks = (counts + widest - 1) // widest
    owner = torch.repeat_interleave(torch.arange(len(occupied), device=device), chunks)
    index_in_cell = torch.arange(len(owner), device=device) - torch.repeat_interleave(torch.cumsum(chunks, 0) - chunks,
                                                                                      chunks)
    chunk_start = starts.index_select(0, owner) + index_in_cell * widest
    chunk_count = torch.clamp(counts.index_select(0, owner) - index_in_cell * widest, max=widest)
    padding = order.index_select(0, chunk_start) if reduce == "max" else torch.full_like(chunk_start, len(cell))
    last_row = max(len(order) - 1, 0)

    def block(chosen: torch.Tensor, width: int) -> torch.Tensor:
        slot = torch.arange(width, device=device)
        position = torch.clamp(chunk_start.index_select(0, chosen)[:, None] + slot, max=last_row)
        inside = slot < chunk_count.index_select(0, chosen)[:, None]
        return torch.where(inside, order.take(position), padding.index_select(0, chosen)[:, None])

    whole = chunks.index_select(0, owner) == 1
    width_index = torch.searchsorted(torch.tensor(WIDTHS, device=device), chunk_count)
    picked = [torch.nonzero(whole & (width_index == i)).squeeze(1) for i in range(len(WIDTHS))]
    crowded = torch.nonzero(~whole).squeeze(1)
    return PoolLayout(tuple(block(chosen, width) for chosen, width in zip(picked, WIDTHS)),
                      tuple(occupied.index_select(0, owner.index_select(0, chosen)) for chosen in picked),
                      block(crowded, widest), occupied.index_select(0, owner.index_select(0, crowded)))


class CellPool(nn.Module):
    """pool() as a module without weights, so that an exported graph's nodes carry its name
    (`.../pool/...`) and a profile of the graph can tell the pooling's share."""

    def __init__(self, reduce: str):
        super().__init__()
        self.reduce = reduce

    def forward(self, rows: torch.Tensor, where: torch.Tensor | PoolLayout, cells: int) -> torch.Tensor:
        return pool(rows, where, cells, self.reduce)


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
    source = rows if reduce == "max" else torch.cat([rows, rows.new_zeros(1, rows.shape[1])])

    def reduced(gather: torch.Tensor) -> torch.Tensor:
        block = source[gather]  # (K, width, C)
        return block.amax(dim=1) if reduce == "max" else block.sum(dim=1)

    out = torch.zeros(cells, rows.shape[1], device=rows.device, dtype=rows.dtype)
    out = out.index_put((torch.cat(layout.cells),), torch.cat([reduced(gather) for gather in layout.gathers]))
    chunks = reduced(layout.chunk_gather)
    if reduce == "max":  # the chunks are maxima of ReLU rows (>= 0): max with the zeros is theirs
        return out.scatter_reduce(0, layout.chunk_cell[:, None].expand_as(chunks), chunks, reduce="amax",
                                  include_self=True)
    return out.index_add(0, layout.chunk_cell, chunks)
