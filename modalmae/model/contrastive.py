"""The contrastive term and the retrieval metric of audio-visual pretraining (CAV-MAE, Gong et al.
ICLR 2023, "Contrastive Audio-Visual Masked Autoencoder").

CAV-MAE adds to the two MAE reconstruction losses an InfoNCE loss between the mean-pooled audio and
video encodings (weight 0.01 in its pretraining): cosine similarity over a temperature of 0.05, the
matching pair on the diagonal, by default in one direction only (each video against every audio
clip of the batch; ``forward_contrastive`` in the official ``src/models/cav_mae.py``), averaged
over the queries; the bidirectional option averages both directions. The official code runs
``nn.DataParallel``, so its negatives are those of one GPU's share of the batch; here every
process's rows are negatives (``gather_with_grad``), so the loss does not depend on how the batch
is split over processes.

Retrieval (its ``src/retrieval.py``): recall@k of the matching clip by cosine similarity.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """The rows of every process's ``x`` [B, D], concatenated in rank order: [world * B, D].

    Gradients flow back to each process's own ``x``: the backward sums over processes the
    gradient of every process's loss with respect to this process's rows. A plain
    ``torch.distributed.all_gather`` (or ``accelerator.gather``) returns tensors cut from the
    graph, so the other processes' rows are constants: each process's loss no longer pushes the
    other processes' features away from its queries, and a process's own rows get no gradient
    from their use as negatives elsewhere. Training runs and the loss even falls, but on
    gradients that are wrong (splicing the local rows back in does not fix the second part).

    Every process must hold the same B (the collective exchanges equal-sized tensors; our
    loaders pad every rank to the same batch size). Identity without torch.distributed or with
    a single process.
    """
    _, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.x marks it deprecated in favour of a private module; it still keeps gradients.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def _logits(queries: Tensor, keys: Tensor, temperature: float, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Logits of the local queries against every process's keys, and the index of each positive.
    Computed in float32 even under autocast (bf16 would add ~0.08 of noise at a temperature of
    0.05). Keys whose ``valid`` is False get a logit far below any other (finite, so no NaN)."""
    rank, _ = _world()
    dtype = torch.promote_types(queries.dtype, torch.float32)  # bf16 / fp16 up, float64 kept
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = F.normalize(queries.to(dtype), dim=-1)  # [B, D]
        k = F.normalize(gather_with_grad(keys.to(dtype)), dim=-1)  # [world * B, D]
        logits = q @ k.T / temperature  # [B, world * B]
    if valid is not None:
        logits = logits.masked_fill(~gather_with_grad(valid.float()).bool()[None, :], -1e4)
    targets = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]  # local rows sit at rank * B
    return logits, targets


def _mean_over(loss: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return loss.mean()
    return torch.where(valid, loss, 0.0).sum() / valid.sum().clamp(min=1)


def info_nce(a: Tensor, b: Tensor, *, temperature: float = 0.05, bidirectional: bool = False, valid: Tensor | None = None) -> Tensor:
    """CAV-MAE's contrastive loss between pooled audio ``a`` [B, D] and video ``b`` [B, D].

    One direction (CAV-MAE's default): each video row is a query against every audio row, its
    own audio the positive, the mean of -log softmax over the queries. ``bidirectional`` adds the
    audio-to-video direction and averages the two. Across processes each process's local rows
    are the queries and every process's rows the keys; each process's loss is the mean over its
    own queries, so the mean of the processes' losses (what DDP's gradient averaging optimises)
    equals the single-process loss over the whole batch.

    ``valid`` bool [B]: the pairs that exist (a video without sound has no audio to match); the
    others are neither queries nor keys. Zero (with a gradient path) when no pair is valid.
    """
    logits, targets = _logits(b, a, temperature, valid)  # video queries, audio keys
    loss = _mean_over(F.cross_entropy(logits, targets, reduction="none"), valid)
    if bidirectional:
        logits, targets = _logits(a, b, temperature, valid)
        loss = (loss + _mean_over(F.cross_entropy(logits, targets, reduction="none"), valid)) / 2
    return loss


@torch.no_grad()
def contrastive_accuracy(a: Tensor, b: Tensor, *, bidirectional: bool = False) -> Tensor:
    """CAV-MAE's ``c_acc``: the fraction of this process's queries whose nearest key (over every
    process) is their positive, in the directions ``info_nce`` uses. Average it over processes.
    """
    logits, targets = _logits(b, a, 1.0)
    acc = (logits.argmax(dim=1) == targets).float().mean()
    if bidirectional:
        logits, targets = _logits(a, b, 1.0)
        acc = (acc + (logits.argmax(dim=1) == targets).float().mean()) / 2
    return acc


@torch.no_grad()
def retrieval_recall(queries: Tensor, keys: Tensor, *, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k of ``keys[i]`` for ``queries[i]`` [N, D] by cosine similarity, for each k in ``ks``.

    Ties count against the query: the rank is the number of other keys at least as similar as
    the match, so a collapsed model (all features equal) scores 0 for every k below N, never 1.0.
    A k at or beyond N gives 1.0 (the rank is at most N - 1). The [N, N] similarity is built at once: evaluation sets of a few
    thousand clips.
    """
    q = F.normalize(queries.double(), dim=-1)  # [N, D]; float64 so rounding makes no false ties
    k = F.normalize(keys.double(), dim=-1)  # [N, D]
    sim = q @ k.T  # [N, N]
    match = sim.diagonal().unsqueeze(1)  # [N, 1]
    rank = (sim >= match).sum(dim=1) - 1  # [N]: other keys at least as close as the match
    return {kk: (rank < kk).double().mean().item() for kk in ks}


def audio_visual_retrieval(audio: Tensor, video: Tensor, *, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for paired clips ``audio`` [N, D], ``video`` [N, D]:
    ``{"a2v_r1": ..., "a2v_r5": ..., "v2a_r1": ...}`` (a2v: audio queries, video keys)."""
    a2v = retrieval_recall(audio, video, ks=ks)
    v2a = retrieval_recall(video, audio, ks=ks)
    return {**{f"a2v_r{k}": r for k, r in a2v.items()}, **{f"v2a_r{k}": r for k, r in v2a.items()}}


def chance_recall(n: int, k: int) -> float:
    """Recall@k of a random ranking of ``n`` keys: min(k, n) / n."""
    return min(k, n) / n
