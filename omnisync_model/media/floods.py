"""Floods by minimax paths on small cost maps, hole filling and blob measures for the weight-free locator.

Directional sweeps: O(rounds * (h + w)) small tensor ops, independent of the batch N.

Shape legend: cost, seeds, mask [N,h,w] (float or bool)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_INF = float("inf")
_MAX_ROUNDS = 8  # sweep rounds of a flood (each = 4 directional sweeps at once)


def _sweep(neg: torch.Tensor, neg_cost: torch.Tensor | None) -> None:
    """In place on negated values [R,B,L] (row-major: each row contiguous), top to bottom. With a cost: row r
    takes max(row, min(best of its 3 neighbours in row r - 1, -cost)), i.e. dist = min(dist, max(neighbour, cost));
    without: max(row, best - 1), i.e. dist = min(dist, neighbour + 1)."""
    for r in range(1, neg.shape[0]):
        best = F.max_pool1d(neg[r - 1].unsqueeze(1), 3, 1, 1).squeeze(1)  # [B,L] -> [B,1,L] -> [B,L], -inf pad
        step = best - 1.0 if neg_cost is None else torch.minimum(best, neg_cost[r])
        torch.maximum(neg[r], step, out=neg[r])


def _both_ways(neg: torch.Tensor, neg_cost2: torch.Tensor | None) -> torch.Tensor:
    """Sweep [R,B,L] down and up at once (stacked on B); ``neg_cost2`` [R,2B,L] is the cost stacked the same way."""
    x = torch.cat([neg, neg.flip(0)], 1)  # [R,2B,L]
    _sweep(x, neg_cost2)
    down, up = x.chunk(2, 1)
    return torch.maximum(down, up.flip(0))


def _propagate(neg: torch.Tensor, neg_cost: torch.Tensor | None, rounds: int) -> torch.Tensor:
    """Rounds of row sweeps (down, up) and column sweeps (right, left) on negated [N,1,h,w] -> [N,1,h,w]."""
    rows = neg[:, 0].permute(1, 0, 2).contiguous()  # [N,1,h,w] -> [h,N,w]
    nc_rows = nc_cols = None
    if neg_cost is not None:
        nc = neg_cost[:, 0].permute(1, 0, 2)  # [h,N,w]
        ncc = nc.permute(2, 1, 0)  # [w,N,h]
        nc_rows, nc_cols = torch.cat([nc, nc.flip(0)], 1), torch.cat([ncc, ncc.flip(0)], 1)  # [h,2N,w], [w,2N,h]
    for _ in range(rounds):
        new = _both_ways(rows, nc_rows).permute(2, 1, 0).contiguous()  # [h,N,w] -> [w,N,h]
        new = _both_ways(new, nc_cols).permute(2, 1, 0).contiguous()  # -> [h,N,w]
        if torch.equal(new, rows):
            break
        rows = new
    return new.permute(1, 0, 2)[:, None]  # [h,N,w] -> [N,1,h,w]


def minimax_flood(cost: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """dist [N,1,h,w]: the smallest, over 8-connected paths from a seed, of the largest ``cost`` on the path.

    ``seeds`` [N,1,h,w] holds the starting value at seed pixels and +inf elsewhere. With cost 0 / +inf (passable /
    wall) and seeds 0 this is a reachability flood: dist == 0 where reachable.
    """
    return -_propagate(-seeds.float(), -cost.float(), _MAX_ROUNDS)


def border_seeds(values: torch.Tensor, bottom: bool) -> torch.Tensor:
    """``values`` on the top, left, right (and bottom) border pixels, +inf elsewhere."""
    seeds = torch.full_like(values, _INF)
    seeds[..., 0, :] = values[..., 0, :]
    seeds[..., :, 0] = values[..., :, 0]
    seeds[..., :, -1] = values[..., :, -1]
    if bottom:
        seeds[..., -1, :] = values[..., -1, :]
    return seeds


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Binary [N,1,h,w]: also mark pixels that cannot reach the frame border through unmarked pixels."""
    free = torch.where(mask > 0.5, _INF, 0.0)
    outside = minimax_flood(free, border_seeds(free, bottom=True)) == 0
    return (~outside).float()


def _chess_distance(mask: torch.Tensor) -> torch.Tensor:
    """Chessboard distance [N,1,h,w] of marked pixels to the nearest unmarked one (outside the frame counts as
    unmarked): 1 next to an unmarked pixel, 0 on unmarked pixels. One round of sweeps is exact."""
    neg = F.pad(torch.where(mask > 0.5, -_INF, 0.0), (1, 1, 1, 1))  # frame border ring of zeros
    return -_propagate(neg, None, 1)[..., 1:-1, 1:-1]


def thickest_blob(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (blob [N,1,h,w] the component holding the deepest pixel, distance map, its maximum [N])."""
    dist = _chess_distance(mask)
    dmax = dist.flatten(1).max(1).values  # [N]
    flat = dist.flatten(1)
    seed = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0).view_as(mask)  # one pixel each
    walls = torch.where(mask > 0.5, 0.0, _INF)
    blob = (minimax_flood(walls, torch.where(seed > 0, 0.0, _INF)) == 0).float() * (dmax > 0).view(-1, 1, 1, 1)
    return blob, dist, dmax
