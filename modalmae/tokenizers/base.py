"""What every tokenizer gives the model, and the few things it must provide.

A tokenizer turns a batch of one modality into tokens. It is an ``nn.Module`` built from plain
keyword arguments and usable on its own (``SpectrogramPatches(embed_dim=768)(fbank)``). The
masked autoencoder relies only on this contract:

- ``tokenizer(x) -> Tokens``: embeddings [B, L, D] with positions already added, the
  reconstruction targets [B, L, P], and optional per-token coordinates;
- ``tokenizer.embed_dim`` (D), ``tokenizer.patch_dim`` (P), ``tokenizer.num_tokens`` (L);
- ``tokenizer.grid``: the token grid shape for grid tokenizers (enables local attention), or None;
- ``tokenizer.decoder_positions(dim) -> nn.Module`` mapping ``Tokens`` to [B or 1, L, dim];
- ``tokenizer.patchify`` / ``tokenizer.unpatchify`` between inputs and [B, L, P] targets;
- ``tokenizer.target_stats(targets) -> (mean, std)`` broadcastable to [B, L, P], the
  method's per-patch normalization of targets (``norm_pix_loss``);
- ``tokenizer.config() -> dict``: the keyword arguments that rebuild it (saved with checkpoints);
- optionally ``tokenizer.loss(pred, target) -> [B, L]``, a per-token loss replacing the MSE
  (Chamfer for point groups), and ``tokenizer.pos_every_block = True`` when positions are
  added before every block of the encoder and the decoder (Point-MAE).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Tokens:
    embeddings: Tensor  # [B, L, D] patch embeddings + positions
    targets: Tensor  # [B, L, P] raw patches the decoder reconstructs
    coords: Tensor | None = None  # [B, L, c] per-sample coordinates (e.g. point-group centres)
    # [B, L, D] positions added before every block instead of once (Point-MAE); when set,
    # ``embeddings`` do not include them.
    positions: Tensor | None = None


def patch_stats(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """MAE's per-patch statistics of [..., P]: mean and sqrt(unbiased variance + eps), [..., 1]."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps) ** 0.5
