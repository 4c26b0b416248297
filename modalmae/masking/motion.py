"""MGMAE's motion-guided masking (Huang et al., ICCV 2023, "MGMAE: Motion Guided Masking for
Video Masked Autoencoding"), at token resolution.

A random visible set is drawn on the base slice (the middle one, MGMAE's default) and turned
into a soft map: the maximum of Gaussians exp(-r^2 / s^2) centred on the visible tokens, s one
token (MGMAE's "mix_gauss" initial map, std = the patch size). The map is carried slice by
slice away from the base by backward warping (bilinear sampling at where each point came from:
MGMAE's default ``warp_type backward``), and a point whose source lies outside the frame takes
the base map's value there (its ``hole_filling consist``). Each slice then keeps the
``H'W' - round(ratio * H'W')`` tokens of largest map mass (MGMAE's top-k per frame), so every
slice has exactly as many visible tokens as tube masking's, and visible tokens follow the
content they started on instead of staying put while it moves under them.

Differences from the official code (MCG-NJU/MGMAE, ``engine_for_mgmae.py``), all but the last
from working on tokens on CPU instead of RAFT pixels on the GPU: the map lives on ``cells`` x
``cells`` points per token (MGMAE: the 224 x 224 pixels of every frame, warped frame to frame
along RAFT-small flow, 6 iterations, then summed over each tube's 2 frames and 16 x 16
pixels); the motion is one field per time slice, ``motion[b, t, h, w] = (dx, dy)`` in tokens
from slice t to t + 1 (``modalmae.data.motion``), so going forward in time the backward
displacement is its inverse, found by a few fixed-point steps d(x) = -motion(x + d(x)). (The
official code's warps before the base frame use the flow of the opposite direction, a
mistyped ``'backwarp'`` test; here both sides warp the intended way.) MGMAE keeps
``int(H'W' * (1 - ratio))`` tokens a frame (19 of 196 at 0.9); here, as in ``tube_masking``
and VideoMAE, ``round(ratio * H'W')`` are masked (20 kept). MGMAE's optional
``exposure_chance`` (Gaussian noise on one random slice's scores, off by default) is not
reproduced.

Ties between equal map values go to the base slice's random order, which is drawn exactly
as ``tube_masking`` draws its order: with zero motion, every slice keeps the base slice's
visible set, the same set ``tube_masking`` keeps from the same generator state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from modalmae.masking import Masks, masks_from_order, num_masked_tokens


def gaussian_map(visible: Tensor, grid: tuple[int, int], cells: int) -> Tensor:
    """[B, H' * cells, W' * cells] maximum of exp(-r^2) (r in tokens) over the centres of the
    ``visible`` tokens [B, K] (indices into H' * W')."""
    height, width = grid
    centre = (torch.arange(height * cells, device=visible.device) + 0.5) / cells - 0.5  # point -> token coordinate
    across = (torch.arange(width * cells, device=visible.device) + 0.5) / cells - 0.5
    vy, vx = (visible // width).float(), (visible % width).float()  # [B, K]
    dy2 = (centre[None, None, :] - vy[..., None]) ** 2  # [B, K, Hc]
    dx2 = (across[None, None, :] - vx[..., None]) ** 2  # [B, K, Wc]
    # max over K of exp(-(dy^2 + dx^2)) = exp(-min over K of the squared distance)
    dist2 = (dy2[..., :, None] + dx2[..., None, :]).amin(dim=1)  # [B, Hc, Wc]
    return torch.exp(-dist2)


def _upsample(field: Tensor, cells: int) -> Tensor:
    """[B, H', W', 2] tokens -> [B, 2, H'c, W'c] in map points (bilinear between token centres)."""
    x = rearrange(field, "b h w c -> b c h w") * cells
    return F.interpolate(x, scale_factor=cells, mode="bilinear", align_corners=False)


def _sample(values: Tensor, displacement: Tensor) -> tuple[Tensor, Tensor]:
    """values [B, C, H, W] read at every point plus ``displacement`` [B, 2, H, W] (points):
    bilinear, edges extended; and whether each source lies inside the map [B, H, W]."""
    _, _, height, width = values.shape
    ys = torch.arange(height, device=values.device, dtype=values.dtype)
    xs = torch.arange(width, device=values.device, dtype=values.dtype)
    x = xs[None, None, :] + displacement[:, 0]
    y = ys[None, :, None] + displacement[:, 1]
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)  # align_corners=False
    inside = (grid.abs() <= 1).all(dim=-1)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out, inside


def _warp(current: Tensor, displacement: Tensor, init: Tensor) -> Tensor:
    """Backward warp [B, Hc, Wc]: each point reads ``current`` where its content was; points
    whose content came from outside the frame take the base map ``init``."""
    out, inside = _sample(current[:, None], displacement)
    return torch.where(inside, out[:, 0], init)


def _inverse(forward: Tensor, steps: int = 3) -> Tensor:
    """Displacement [B, 2, H, W] from each point of the next slice back to this one, given the
    forward one: the fixed point of d(x) = -forward(x + d(x)), from d = -forward(x)."""
    back = -forward
    for _ in range(steps):
        back = -_sample(forward, back)[0]
    return back


def motion_guided_masking(
    motion: Tensor, ratio: float, *, generator: torch.Generator, base: int | None = None, cells: int = 4
) -> Masks:
    """MGMAE masks for a batch of token motion fields ``motion`` [B, T', H', W', 2] (dx, dy in
    tokens from slice t to t + 1; the last slice's values are unused).

    Exactly ``round(ratio * H' * W')`` tokens of every time slice are masked, like
    ``tube_masking``; tokens are t-major (index = t * H' * W' + h * W' + w). ``base``: the slice
    the random mask is drawn on (default the middle one, T' // 2); ``cells``: map points per
    token side. The noise comes from ``generator`` (on its device); the masks are on
    ``motion``'s device.
    """
    if motion.ndim != 5 or motion.shape[-1] != 2:
        raise ValueError(f"motion must be [B, T', H', W', 2], got {list(motion.shape)}")
    batch, slices, height, width, _ = motion.shape
    base = slices // 2 if base is None else base
    if not 0 <= base < slices:
        raise ValueError(f"base slice {base} outside 0..{slices - 1}")
    tokens = height * width
    per_slice = num_masked_tokens(tokens, ratio)
    keep = tokens - per_slice
    device = motion.device
    noise = torch.rand(batch, tokens, generator=generator, device=generator.device)
    spatial = torch.argsort(noise, dim=1).to(device)  # [B, HW]: as tube_masking draws it
    motion = motion.float()
    if keep == 0:  # nothing visible to carry: every token masked, as tube_masking gives
        order = spatial[:, None, :] + torch.arange(slices, device=device)[:, None] * tokens
        return masks_from_order(order.flatten(1), slices * per_slice)

    init = gaussian_map(spatial[:, :keep], (height, width), cells)  # [B, Hc, Wc]
    maps: list[Tensor | None] = [None] * slices
    maps[base] = init
    for t in range(base + 1, slices):  # forward in time: read slice t - 1 where the content came from
        maps[t] = _warp(maps[t - 1], _inverse(_upsample(motion[:, t - 1], cells)), init)
    for t in range(base - 1, -1, -1):  # backward in time: read slice t + 1 where the content went
        maps[t] = _warp(maps[t + 1], _upsample(motion[:, t], cells), init)
    score = F.avg_pool2d(torch.stack(maps, dim=1), cells).flatten(2)  # [B, T', HW]: map mass per token

    # Per slice, largest mass first; equal masses in the base slice's random order (stable sort).
    in_base_order = score.gather(2, spatial[:, None, :].expand(-1, slices, -1))
    rank = torch.argsort(-in_base_order, dim=2, stable=True)
    order = spatial[:, None, :].expand(-1, slices, -1).gather(2, rank)  # [B, T', HW] positions
    order = order + torch.arange(slices, device=device)[None, :, None] * tokens
    ids = torch.cat([order[:, :, :keep].flatten(1), order[:, :, keep:].flatten(1)], dim=1)
    return masks_from_order(ids, slices * per_slice)
