"""The modality-agnostic masked autoencoder (MAE, He et al. 2022; as Audio-MAE, VideoMAE, Point-MAE and BM-MAE use it).

- ``Encoder``: a tokenizer and a ViT that runs on the *visible* tokens only.
- ``Decoder``: a lighter ViT over the encoded visible tokens plus a learned mask token at each
  position to predict, every token carrying a decoder-width position; a linear head to patches.
- ``MaskedAutoencoder``: both, and the loss on masked tokens only.

Work is done only where the method needs it: the tokenizer embeds only the visible tokens and
cuts out only the targets to predict (``Tokenizer.tokens_at``), and the output keeps the
predictions and targets at the predicted tokens; their [B, L, P] layout over every token is
built only when read (``MAEOutput.pred``, ``.target``).

The decoder is handed the positions to predict (``Masks.ids_predict``, all masked tokens by default),
so a decoder that sees only part of the masked tokens (VideoMAE V2's decoder masking) needs no
other change. Attention is permutation-equivariant, so the decoder works on the
``[visible, predicted]`` order directly instead of un-shuffling to the grid as MAE does; local
attention, which does depend on the layout, is masked by grid coordinates instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from modalmae.masking import Masks
from modalmae.model.config import MAEConfig
from modalmae.model.loss import weighted_mean
from modalmae.model.transformer import Transformer, init_weights, window_attention_mask
from modalmae.tokenizers.base import MaskedTokens, Tokenizer, Tokens, gather_tokens
from modalmae.tokenizers.positions import grid_coordinates


def key_mask(valid: Tensor) -> Tensor:
    """bool [B, N] (False: a token no one may attend to) -> an attention mask [B, 1, 1, N]."""
    return valid[:, None, None, :]


class Encoder(nn.Module):
    """Tokenizer + transformer. ``forward`` gives features of every token (no masking)."""

    def __init__(self, tokenizer: Tokenizer, config: MAEConfig) -> None:
        super().__init__()
        if tokenizer.embed_dim != config.encoder_dim:
            raise ValueError(
                f"tokenizer embed_dim {tokenizer.embed_dim} != encoder width {config.encoder_dim}; "
                f"build the tokenizer with embed_dim={config.encoder_dim}"
            )
        self.tokenizer = tokenizer
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.encoder_dim)) if config.cls_token else None
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, config.encoder_dim)) if config.modality_embed else None
        self.transformer = Transformer(
            config.encoder_dim, depth=config.encoder_depth, num_heads=config.encoder_heads, mlp_ratio=config.mlp_ratio,
            eps=config.norm_eps, final_norm=config.encoder_norm,
        )
        # Normalizes mean-pooled features (``fc_norm`` of fine-tuned VideoMAE / Audio-MAE).
        pooled_eps = config.norm_eps if config.pooled_norm_eps is None else config.pooled_norm_eps
        self.fc_norm = nn.LayerNorm(config.encoder_dim, eps=pooled_eps) if config.pooled_norm else None
        init_weights(self.transformer)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    def encode(self, tokens: Tokens, ids_keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        """Tokens -> [B, prefix + Lk, D] features of the kept tokens ``ids_keep`` [B, Lk] (all
        when None). ``keep_valid`` bool [B, Lk]: False for padding slots (per-sample ratios),
        which no token attends to."""
        x = tokens.embeddings  # [B, L, D]
        pos = tokens.positions.expand(x.shape[0], -1, -1)  # [B, L, D]
        if ids_keep is not None:
            x, pos = gather_tokens(x, ids_keep), gather_tokens(pos, ids_keep)
        return self._encode(x, pos, keep_valid)

    def encode_visible(self, tokens: MaskedTokens, ids_keep: Tensor, keep_valid: Tensor | None = None) -> Tensor:
        """``encode`` of the tokens ``ids_keep`` when ``tokens`` (``Tokenizer.tokens_at``) holds
        only their embeddings: the same features, without embedding the others."""
        pos = gather_tokens(tokens.positions.expand(ids_keep.shape[0], -1, -1), ids_keep)
        return self._encode(tokens.embeddings, pos, keep_valid)

    def _encode(self, x: Tensor, pos: Tensor, keep_valid: Tensor | None) -> Tensor:
        """Embeddings and positions [B, Lk, D] of the tokens to encode -> features. Positions are
        added to the input, or before every block when the tokenizer says so
        (``pos_every_block``); the CLS token has none."""
        if self.modality_embed is not None:
            x = x + self.modality_embed
        if not self.tokenizer.pos_every_block:
            x, pos = x + pos, None
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            pos = None if pos is None else torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        masks = None
        if keep_valid is not None:
            keys = torch.cat([keep_valid.new_ones(x.shape[0], self.num_prefix_tokens), keep_valid], dim=1)
            masks = [key_mask(keys)] * len(self.transformer.blocks)
        return self.transformer(x, masks, pos=pos)

    def forward(self, x: Tensor) -> Tensor:
        """Inputs of the tokenizer's modality -> [B, prefix + L, D] features."""
        return self.encode(self.tokenizer(x))

    def pooled(self, x: Tensor, *, pool: str = "mean") -> Tensor:
        """[B, D] clip embedding: mean over patch tokens (then ``fc_norm`` when the encoder has
        one), or the CLS token."""
        return self.pool(self(x), pool=pool)

    def pool(self, feats: Tensor, *, pool: str = "mean") -> Tensor:
        """[B, prefix + L, D] token features -> [B, D]."""
        if pool == "cls":
            if self.cls_token is None:
                raise ValueError("this encoder has no CLS token; use pool='mean'")
            return feats[:, 0]
        if pool != "mean":
            raise ValueError(f"unknown pooling {pool!r}: mean or cls")
        pooled = feats[:, self.num_prefix_tokens :].mean(dim=1)
        return pooled if self.fc_norm is None else self.fc_norm(pooled)


class Decoder(nn.Module):
    def __init__(self, tokenizer: Tokenizer, config: MAEConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.embed = nn.Linear(config.encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = tokenizer.decoder_positions(dim)
        self.transformer = Transformer(
            dim, depth=config.decoder_depth, num_heads=config.decoder_heads, mlp_ratio=config.mlp_ratio,
            eps=config.norm_eps, final_eps=config.decoder_norm_eps,
        )
        self.head = nn.Linear(dim, tokenizer.patch_dim)
        self.pos_every_block = tokenizer.pos_every_block
        self.window = config.decoder_window
        if self.window is not None:
            if tokenizer.grid is None or len(tokenizer.grid) != len(self.window):
                raise ValueError(f"decoder_window {self.window} needs a token grid of the same rank")
            self.register_buffer("grid_coords", grid_coordinates(tuple(tokenizer.grid)), persistent=False)
            self.shift = config.decoder_shift or tuple(w // 2 for w in self.window)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def _window_masks(self, ids: Tensor, num_prefix: int) -> list[Tensor]:
        coords = self.grid_coords[ids]  # [B, N, n_axes]
        if num_prefix:
            outside = coords.new_full((ids.shape[0], num_prefix, coords.shape[-1]), -1)
            coords = torch.cat([outside, coords], dim=1)
        no_shift = tuple(0 for _ in self.window)
        masks = [window_attention_mask(coords, window=self.window, shift=s) for s in (no_shift, self.shift)]
        # Swin alternates plain and shifted windows, block by block.
        return [masks[i % 2] for i in range(len(self.transformer.blocks))]

    def forward(
        self, latent: Tensor, tokens: Tokens | MaskedTokens, *, ids_keep: Tensor, ids_predict: Tensor, num_prefix: int, valid: Tensor | None = None,
    ) -> Tensor:
        """latent [B, prefix + Lk, De] -> predictions [B, Lp, P] at ``ids_predict``; ``valid``
        bool [B, Lk + Lp]: False for padding slots (per-sample ratios), never attended to."""
        x = self.embed(latent)
        pos = self.positions(tokens).expand(x.shape[0], -1, -1)  # [B, L, Dd]
        pos_visible, pos_predict = gather_tokens(pos, ids_keep), gather_tokens(pos, ids_predict)
        queries = self.mask_token.expand(x.shape[0], ids_predict.shape[1], -1)  # [B, Lp, Dd]
        block_pos = None
        if self.pos_every_block:
            x = torch.cat([x, queries], dim=1)
            block_pos = torch.cat([torch.zeros_like(x[:, :num_prefix]), pos_visible, pos_predict], dim=1)
        else:
            x = torch.cat([x[:, :num_prefix], x[:, num_prefix:] + pos_visible, queries + pos_predict], dim=1)
        attn_masks = None
        if self.window is not None:
            attn_masks = self._window_masks(torch.cat([ids_keep, ids_predict], dim=1), num_prefix)
        if valid is not None:
            keys = key_mask(torch.cat([valid.new_ones(x.shape[0], num_prefix), valid], dim=1))
            attn_masks = [keys if m is None else m & keys for m in attn_masks or [None] * len(self.transformer.blocks)]
        x = self.transformer(x, attn_masks, pos=block_pos)
        return self.head(x[:, x.shape[1] - ids_predict.shape[1] :])  # not -Lp: Lp may be 0


def normalized_targets(tokenizer: Tokenizer, target: Tensor) -> Tensor:
    """[B, Lp, P] targets normalized with the tokenizer's per-patch statistics (norm-pix loss).
    Being per patch, they need only the patches predicted; with none (Lp = 0) there is nothing
    to normalize."""
    if target.numel() == 0:
        return target
    mean, std = tokenizer.target_stats(target)
    return (target - mean) / std


@dataclass
class MAEOutput:
    """A forward's loss and what it was computed from.

    Predictions and targets are kept as they were made, one row per predicted slot; ``pred``,
    ``target`` and ``loss_mask`` lay them out over the L tokens, built when first read (pictures,
    completions), so a training step allocates no [B, L, P] tensor it does not use."""

    loss: Tensor  # scalar
    pred_tokens: Tensor  # [B, Lp, P] predictions, one per slot of ids_predict
    target_tokens: Tensor  # [B, Lp, P] their loss targets (per-patch normalized when norm_pix_loss)
    weight: Tensor  # [B, Lp] 1 = counted in the loss (masked, and of a present modality)
    # [B, Lp] long: the token of each slot; L (no token) for a slot holding none of this output's
    # tokens (a joint model's padding, see ``MultiModalMAE``)
    ids_predict: Tensor
    mask: Tensor  # [B, L] 1 = masked

    def dense(self, values: Tensor) -> Tensor:
        """Per-slot values [B, Lp, ...] -> [B, L, ...] at their tokens, zeros elsewhere."""
        batch, length = self.mask.shape
        index = self.ids_predict.view(*self.ids_predict.shape, *(1,) * (values.ndim - 2)).expand_as(values)
        return values.new_zeros(batch, length + 1, *values.shape[2:]).scatter(1, index, values)[:, :length].contiguous()

    @cached_property
    def pred(self) -> Tensor:
        """[B, L, P] the predictions at the predicted tokens, zeros elsewhere."""
        return self.dense(self.pred_tokens)

    @cached_property
    def target(self) -> Tensor:
        """[B, L, P] the loss targets at the predicted tokens, zeros elsewhere."""
        return self.dense(self.target_tokens)

    @cached_property
    def loss_mask(self) -> Tensor:
        """[B, L] 1 = counted in the loss (masked and predicted)."""
        return self.dense(self.weight)


class MaskedAutoencoder(nn.Module):
    def __init__(self, tokenizer: Tokenizer, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(tokenizer, config)
        self.decoder = Decoder(tokenizer, config)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.encoder.tokenizer

    def forward(self, x: Tensor, masks: Masks) -> MAEOutput:
        """Encode the visible tokens, predict ``masks.ids_predict`` (default: every masked token)."""
        ids_predict = masks.ids_masked if masks.ids_predict is None else masks.ids_predict
        tokens = self.tokenizer.tokens_at(x, masks.ids_keep, ids_predict)
        latent = self.encoder.encode_visible(tokens, masks.ids_keep, masks.keep_valid)
        valid = None if not masks.padded else torch.cat([masks.keep_valid, masks.masked_valid], dim=1)
        pred = self.decoder(
            latent, tokens, ids_keep=masks.ids_keep, ids_predict=ids_predict, num_prefix=self.encoder.num_prefix_tokens, valid=valid,
        )  # [B, Lp, P]
        target = normalized_targets(self.tokenizer, tokens.targets) if self.config.norm_pix_loss else tokens.targets  # [B, Lp, P]
        # The tokenizer's per-token loss (MSE, Chamfer for point groups), averaged over the
        # predicted tokens that are masked.
        weight = torch.gather(masks.mask, 1, ids_predict)
        loss = weighted_mean(self.tokenizer.loss(pred, target), weight)
        return MAEOutput(loss=loss, pred_tokens=pred, target_tokens=target, weight=weight, ids_predict=ids_predict, mask=masks.mask)
