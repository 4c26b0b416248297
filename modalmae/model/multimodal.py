"""One masked autoencoder over several modalities at once: MultiMAE (Bachmann et al. 2022),
CAV-MAE (Gong et al. 2023), AVSiam (Lin et al. 2024).

Each modality keeps its tokenizer. The tokens of the modalities of a sample are concatenated,
modality after modality in the model's order, into one sequence, each token with its positions
and a learned modality embedding, and one ``Masks`` over that sequence says which are visible:
every modality masked by its own method and ratio and the masks joined (``concat_masks``;
CAV-MAE), or one visible budget split across the modalities of each sample by a Dirichlet draw
(``dirichlet_masking``; MultiMAE). The encoder runs the visible tokens through
``specific_depth`` blocks of their own modality (CAV-MAE: 11 of 12), then through the remaining
blocks together (0: a fully shared encoder, as AVSiam and MultiMAE). The decoder sees every
modality's tokens, with decoder-width positions and a decoder modality embedding, and predicts
each modality's masked patches through that modality's head; the loss is a weighted sum of the
modalities' losses (the tokenizer's per-token loss, mean over the modality's masked tokens).

A sample may lack a modality (a video without sound: ``Group.present``). Its tokens stay in the
sequence, so batches stay dense, but no token attends to them and they carry no loss.

A forward takes several ``Group``s: the modalities of one clip (audio and video) are one group,
one sequence per sample; unpaired corpora (speech, clips, scans) are one group per modality.
One forward can then hold every modality of a step, which is what DDP needs: every process
uses every parameter in every step (see ``modalmae.train.joint``).

Pooled features for a contrastive term (``Group.pooled``) are computed as CAV-MAE does: each
modality's visible tokens run through the shared blocks *alone* and are averaged, so the audio
feature cannot have looked at the video it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from modalmae.masking import Masks
from modalmae.model.config import MAEConfig
from modalmae.model.loss import weighted_mean
from modalmae.model.mae import Encoder, MAEOutput, key_mask, normalized_targets
from modalmae.model.transformer import Transformer, init_weights
from modalmae.tokenizers.base import MaskedTokens, Tokenizer, gather_tokens


@dataclass
class Group:
    """Samples whose modalities belong together (one sequence per sample)."""

    inputs: dict[str, Any]  # modality -> its tokenizer's input, [B, ...] (B the same for all)
    masks: Masks  # over the concatenated tokens of ``inputs``' modalities, in the model's order
    present: dict[str, Tensor] = field(default_factory=dict)  # modality -> bool [B]; missing: all present
    pooled: bool = False  # also return each modality's pooled features, encoded alone


@dataclass
class MultiModalOutput:
    loss: Tensor  # scalar: sum over modalities of weight x loss, averaged over groups by samples
    stats: dict[str, Tensor]  # modality -> [sum, count] of its per-token loss over the counted tokens
    outputs: list[dict[str, MAEOutput]]  # per group, per modality (for pictures)
    pooled: list[dict[str, Tensor]]  # per group, modality -> [B, D] (empty unless Group.pooled)


class MultiModalMAE(nn.Module):
    def __init__(
        self, tokenizers: dict[str, Tokenizer], config: MAEConfig, *, specific_depth: int = 0, loss_weights: dict[str, float] | None = None,
        norm_pix: dict[str, bool] | None = None,
    ) -> None:
        """``loss_weights``: each modality's reconstruction loss weight (default 1);
        ``norm_pix``: whether a modality's targets are normalized per patch (default:
        ``config.norm_pix_loss``; point groups and z-scored MRI train without)."""
        super().__init__()
        if config.decoder_window is not None or config.cls_token or config.pooled_norm or config.modality_embed:
            raise ValueError("a joint model has global decoder attention, no CLS token, no pooled norm and modality embeddings of its own")
        if not 0 <= specific_depth <= config.encoder_depth:
            raise ValueError(f"specific_depth {specific_depth} must be in 0..{config.encoder_depth} (the encoder's depth)")
        for name, tokenizer in tokenizers.items():
            if tokenizer.embed_dim != config.encoder_dim:
                raise ValueError(f"{name} tokenizer embed_dim {tokenizer.embed_dim} != encoder width {config.encoder_dim}")
        unknown = sorted((set(loss_weights or {}) | set(norm_pix or {})) - set(tokenizers))
        if unknown:
            raise ValueError(f"settings for {', '.join(unknown)}: the model's modalities are {', '.join(tokenizers)}")
        self.config, self.specific_depth, self.modalities = config, specific_depth, tuple(tokenizers)
        self.loss_weights = {m: float((loss_weights or {}).get(m, 1.0)) for m in self.modalities}
        self.norm_pix = {m: bool((norm_pix or {}).get(m, config.norm_pix_loss)) for m in self.modalities}
        dim, ddim = config.encoder_dim, config.decoder_dim

        def blocks(width: int, depth: int, heads: int, final_norm: bool) -> Transformer:
            return Transformer(width, depth=depth, num_heads=heads, mlp_ratio=config.mlp_ratio, eps=config.norm_eps, final_norm=final_norm)

        self.tokenizers = nn.ModuleDict(tokenizers)
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in self.modalities})
        self.specific = nn.ModuleDict({m: blocks(dim, specific_depth, config.encoder_heads, False) for m in self.modalities})
        self.shared = blocks(dim, config.encoder_depth - specific_depth, config.encoder_heads, config.encoder_norm)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, ddim)) for m in self.modalities})
        self.decoder_positions = nn.ModuleDict({m: t.decoder_positions(ddim) for m, t in tokenizers.items()})
        self.decoder = blocks(ddim, config.decoder_depth, config.decoder_heads, True)
        self.heads = nn.ModuleDict({m: nn.Linear(ddim, t.patch_dim) for m, t in tokenizers.items()})
        for module in (self.specific, self.shared, self.decoder_embed, self.decoder_positions, self.decoder, self.heads):
            init_weights(module)
        for p in (self.mask_token, *self.modality_embed.values(), *self.decoder_modality_embed.values()):
            nn.init.normal_(p, std=0.02)

    # ------------------------------------------------------------------------- layout

    def order(self, inputs: dict[str, Any]) -> list[str]:
        """The modalities of ``inputs`` in the model's order (the order of their tokens)."""
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise ValueError(f"no tokenizer for {', '.join(unknown)}; this model's modalities: {', '.join(self.modalities)}")
        return [m for m in self.modalities if m in inputs]

    def lengths(self, names: list[str]) -> list[int]:
        return [self.tokenizers[m].num_tokens for m in names]

    def _owner(self, names: list[str], device) -> Tensor:
        """[L] the index (in ``names``) of the modality of each token of the joint sequence."""
        return torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(self.lengths(names))])

    @staticmethod
    def _valid(names: list[str], lengths: list[int], present: dict[str, Tensor], batch: int, device) -> Tensor | None:
        """[B, L] True where the token's modality is present in the sample; None when all are."""
        if not any(m in present for m in names):
            return None
        parts = [present[m].to(device=device, dtype=torch.bool)[:, None].expand(-1, n) if m in present else
                 torch.ones(batch, n, dtype=torch.bool, device=device) for m, n in zip(names, lengths)]
        valid = torch.cat(parts, dim=1)
        if not valid.any(dim=1).all():
            raise ValueError(f"a sample has none of the modalities {', '.join(names)}")
        return valid

    @staticmethod
    def _columns(owner_keep: Tensor, names: list[str]) -> list[Tensor] | None:
        """Per modality, the columns of ``ids_keep`` holding its tokens when they are the same in
        every sample (as ``concat_masks`` makes them); None when they differ (a budget split)."""
        if not (owner_keep == owner_keep[:1]).all():
            return None
        return [(owner_keep[0] == i).nonzero().flatten() for i in range(len(names))]

    @staticmethod
    def _split(owner_slots: Tensor, count: int) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Slots [B, K] of the joint sequence and the modality (0 .. count - 1) of each one's token
        -> per modality ``slots`` [B, K_m], the slots holding its tokens in their order, padded
        to its largest count in the batch, and ``real`` [B, K_m], False for the padding; and
        ``back`` [B, K], where each slot lies in the modalities' slots concatenated (which joins
        per-modality tensors into the slots' order again). With per-modality masks
        (``concat_masks``) every sample has the same slots and there is no padding."""
        slots, real, back, offset = [], [], torch.zeros_like(owner_slots), 0
        for i in range(count):
            mine = owner_slots == i
            size = int(mine.sum(dim=1).max())
            order = torch.argsort((~mine).long(), dim=1, stable=True)[:, :size]  # its slots first, in order
            slots.append(order)
            real.append(torch.gather(mine, 1, order))
            back = torch.where(mine, offset + mine.long().cumsum(dim=1) - 1, back)
            offset += size
        return slots, real, back

    # ------------------------------------------------------------------------- encoder

    def _embed(self, names: list[str], embeddings: list[Tensor], positions: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Per modality, the embeddings and positions [B, K_m, D] of some of its tokens -> their
        input tokens, concatenated [B, sum K_m, D] (embedding + modality embedding + positions
        unless added per block), and the positions added before every block (zero for
        modalities that add them once), or None when no tokenizer adds them per block."""
        xs, per_block = [], []
        every = any(self.tokenizers[m].pos_every_block for m in names)
        for m, embedding, pos in zip(names, embeddings, positions):
            x = embedding + self.modality_embed[m]
            if self.tokenizers[m].pos_every_block:
                per_block.append(pos)
            else:
                x = x + pos
                if every:
                    per_block.append(torch.zeros_like(pos))
            xs.append(x)
        return torch.cat(xs, dim=1), (torch.cat(per_block, dim=1) if every else None)

    def _encode(self, group: Group, names: list[str], x: Tensor, pos: Tensor | None, valid: Tensor | None, owner: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The input tokens and per-block positions [B, Lk, D] (``_embed``) of the visible tokens
        -> (their latent [B, Lk, D], pooled {modality: [B, D]} when asked)."""
        ids_keep = group.masks.ids_keep
        owner_keep = owner[ids_keep]  # [B, Lk]
        columns = self._columns(owner_keep, names) if self.specific_depth or group.pooled else None
        if self.specific_depth:
            if columns is None:
                raise ValueError(
                    "modality-specific blocks need the same number of visible tokens of each modality in every sample "
                    "(per-modality ratios, concat_masks); a budget split across modalities needs specific_depth=0"
                )
            parts = x.new_zeros(x.shape)
            for m, cols in zip(names, columns):
                parts[:, cols] = self.specific[m](x[:, cols], pos=None if pos is None else pos[:, cols])
            x = parts
        keys = None if valid is None else gather_tokens(valid[..., None], ids_keep)[..., 0]  # [B, Lk]
        latent = self.shared(x, None if keys is None else [key_mask(keys)] * len(self.shared.blocks), pos=pos)
        pooled = {}
        if group.pooled and columns is not None:
            for m, cols in zip(names, columns):
                alone = self.shared(x[:, cols], pos=None if pos is None else pos[:, cols])  # [B, Lk_m, D]
                pooled[m] = alone.mean(dim=1)
        elif group.pooled:  # counts differ by sample: each modality attends only to itself, by mask
            same = (owner_keep[:, :, None] == owner_keep[:, None, :])[:, None]  # [B, 1, Lk, Lk]
            alone = self.shared(x, [same] * len(self.shared.blocks), pos=pos)
            for i, m in enumerate(names):
                weight = (owner_keep == i).to(alone.dtype)[..., None]  # [B, Lk, 1]
                pooled[m] = (alone * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)  # zero without visible tokens
        return latent, pooled

    # ------------------------------------------------------------------------- decoder

    def _decode(self, names: list[str], tokens: dict[str, MaskedTokens], latent: Tensor, masks: Masks, ids_predict: Tensor, valid: Tensor | None) -> Tensor:
        """-> decoder features [B, Lp, Dd] at ``ids_predict``."""
        once, per_block = [], []
        every = any(self.tokenizers[m].pos_every_block for m in names)
        for m in names:
            pos = self.decoder_positions[m](tokens[m]).expand(latent.shape[0], -1, -1)  # [B, L_m, Dd]
            if self.tokenizers[m].pos_every_block:
                once.append(self.decoder_modality_embed[m].expand_as(pos))
                per_block.append(pos)
            else:
                once.append(pos + self.decoder_modality_embed[m])
                if every:
                    per_block.append(torch.zeros_like(pos))
        once_all = torch.cat(once, dim=1)  # [B, L, Dd]
        x = self.decoder_embed(latent) + gather_tokens(once_all, masks.ids_keep)
        queries = self.mask_token + gather_tokens(once_all, ids_predict)
        ids = torch.cat([masks.ids_keep, ids_predict], dim=1)
        block_pos = gather_tokens(torch.cat(per_block, dim=1), ids) if every else None
        keys = None if valid is None else torch.gather(valid, 1, ids)
        h = self.decoder(torch.cat([x, queries], dim=1), None if keys is None else [key_mask(keys)] * len(self.decoder.blocks), pos=block_pos)
        return h[:, latent.shape[1] :]

    # ------------------------------------------------------------------------- forward

    def _group(self, group: Group) -> tuple[Tensor, dict[str, Tensor], dict[str, MAEOutput], dict[str, Tensor]]:
        names = self.order(group.inputs)
        batch, device = group.masks.mask.shape[0], group.masks.mask.device
        lengths = self.lengths(names)
        if group.masks.mask.shape[1] != sum(lengths):
            raise ValueError(f"masks over {group.masks.mask.shape[1]} tokens for {' + '.join(names)} = {sum(lengths)} tokens")
        starts = [sum(lengths[:i]) for i in range(len(names))]
        valid = self._valid(names, lengths, group.present, batch, device)
        owner = self._owner(names, device)
        ids_keep = group.masks.ids_keep
        ids_predict = group.masks.ids_masked if group.masks.ids_predict is None else group.masks.ids_predict
        # Each tokenizer embeds only its visible tokens and cuts out only the targets of its
        # predicted ones, at ids within its modality (``local``; padding slots point at any of its
        # tokens and are never used).
        keep_slots, _, back = self._split(owner[ids_keep], len(names))
        predict_slots, predict_real, _ = self._split(owner[ids_predict], len(names))

        def local(ids: Tensor, slots: Tensor, i: int) -> Tensor:
            return (torch.gather(ids, 1, slots) - starts[i]).clamp(0, lengths[i] - 1)

        keep = [local(ids_keep, keep_slots[i], i) for i in range(len(names))]
        predict = [local(ids_predict, predict_slots[i], i) for i in range(len(names))]
        tokens = {m: self.tokenizers[m].tokens_at(group.inputs[m], keep[i], predict[i]) for i, m in enumerate(names)}
        x, pos = self._embed(
            names, [tokens[m].embeddings for m in names],
            [gather_tokens(tokens[m].positions.expand(batch, -1, -1), keep[i]) for i, m in enumerate(names)],
        )
        x, pos = gather_tokens(x, back), (None if pos is None else gather_tokens(pos, back))  # [B, Lk, D] in ids_keep's order
        latent, pooled = self._encode(group, names, x, pos, valid, owner)
        h = self._decode(names, tokens, latent, group.masks, ids_predict, valid)  # [B, Lp, Dd]
        counted = torch.gather(group.masks.mask, 1, ids_predict)  # [B, Lp]
        if valid is not None:
            counted = counted * torch.gather(valid, 1, ids_predict)
        loss, stats, outputs = latent.new_zeros(()), {}, {}
        for i, (m, start, n) in enumerate(zip(names, starts, lengths)):
            # Each head on its own modality's predicted slots.
            tokenizer, slots, real = self.tokenizers[m], predict_slots[i], predict_real[i]
            pred = self.heads[m](gather_tokens(h, slots))  # [B, Lp_m, P_m]
            weight = torch.gather(counted, 1, slots) * real
            target = normalized_targets(tokenizer, tokens[m].targets) if self.norm_pix[m] else tokens[m].targets  # [B, Lp_m, P_m]
            per_token = tokenizer.loss(pred, target)  # [B, Lp_m]
            loss = loss + self.loss_weights[m] * weighted_mean(per_token, weight)
            stats[m] = torch.stack([(per_token * weight).sum(), weight.sum()]).detach()
            outputs[m] = MAEOutput(
                loss=weighted_mean(per_token, weight).detach(), pred_tokens=pred, target_tokens=target, weight=weight,
                ids_predict=torch.where(real, predict[i], n), mask=group.masks.mask[:, start : start + n],
            )
        return loss, stats, outputs, pooled

    def pooled(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """{modality: [B, D]}: each modality's tokens, all visible, encoded alone (its blocks,
        then the shared ones) and averaged: the features ``encoder_for(m).pooled`` gives."""
        features = {}
        for m in self.order(inputs):
            tokens = self.tokenizers[m](inputs[m])
            x, pos = self._embed([m], [tokens.embeddings], [tokens.positions.expand(tokens.embeddings.shape[0], -1, -1)])
            x = self.specific[m](x, pos=pos) if self.specific_depth else x
            features[m] = self.shared(x, pos=pos).mean(dim=1)
        return features

    def visible_counts(self, group: Group) -> dict[str, Tensor]:
        """{modality: [B]} how many of each modality's tokens each sample shows the encoder."""
        names = self.order(group.inputs)
        owner_keep = self._owner(names, group.masks.ids_keep.device)[group.masks.ids_keep]
        return {m: (owner_keep == i).sum(dim=1) for i, m in enumerate(names)}

    def forward(self, *groups: Group) -> MultiModalOutput:
        """Every group's loss, averaged over groups in proportion to their samples."""
        total = sum(g.masks.mask.shape[0] for g in groups)
        loss, stats, outputs, pooled = None, {}, [], []
        for group in groups:
            group_loss, group_stats, group_outputs, group_pooled = self._group(group)
            share = group.masks.mask.shape[0] / total
            loss = group_loss * share if loss is None else loss + group_loss * share
            for m, s in group_stats.items():
                stats[m] = stats[m] + s if m in stats else s
            outputs.append(group_outputs)
            pooled.append(group_pooled)
        return MultiModalOutput(loss=loss, stats=stats, outputs=outputs, pooled=pooled)

    # ------------------------------------------------------------------------- one modality

    def encoder_for(self, modality: str) -> Encoder:
        """A standalone ``Encoder`` of one modality with this model's weights (a copy): its
        tokenizer and modality embedding, its specific blocks, then the shared ones. Its
        ``pooled`` features are those a ``Group(pooled=True)`` gives with every token visible."""
        if modality not in self.modalities:
            raise ValueError(f"no {modality} in this model; its modalities: {', '.join(self.modalities)}")
        tokenizer = self.tokenizers[modality]
        encoder = Encoder(type(tokenizer)(**tokenizer.config()), replace(self.config, modality_embed=True))
        state = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
        state["modality_embed"] = self.modality_embed[modality]
        blocks = [*self.specific[modality].blocks, *self.shared.blocks]
        for i, block in enumerate(blocks):
            state.update({f"transformer.blocks.{i}.{k}": v for k, v in block.state_dict().items()})
        state.update({f"transformer.norm.{k}": v for k, v in self.shared.norm.state_dict().items()})
        encoder.load_state_dict(state, strict=True)
        return encoder.to(self.mask_token.device)
