"""Knowledge distillation during MAE pretraining (DMAE: Bai et al., CVPR 2023, "Masked Autoencoders
Enable Efficient Knowledge Distillers").

Next to the pixel reconstruction loss, the student's features after one intermediate block, on
its *visible* tokens, go through a projection to the teacher's width and are matched to a frozen
teacher's features after one intermediate block, on the *same* visible tokens. The teacher
encodes only the visible tokens and runs only up to that block, which keeps it cheap.

What the official code (github.com/UCSC-VLAA/DMAE: ``main_distill.py``, ``engine_distill.py``,
``models_mae_distill.py``, ``pretrain.sh``) does:
- layers: the student's block 8 and the teacher's block 17, counted from 0 (``pretrain.sh``:
  ``--aligned_blks_indices 8 --teacher_aligned_blks_indices 17``), i.e. the output of block 9 of
  ViT-B's 12 and of block 18 of ViT-L's 24: three quarters of each depth. The raw block output:
  the encoder's final LayerNorm is applied only after the last block.
- projection: on the student side, one ``nn.Linear(student_dim, teacher_dim)`` per matched block
  (``--aligned_feature_projection_mode`` defaults to ``fc-1layer``; one- and two-layer MLPs are
  options), trained with the student (it is a part of the student model the optimizer sees, with
  weight decay on its weight).
- loss: ``nn.L1Loss`` (``--embedding_distillation_func L1``; ``L2`` = MSE is the option) between
  ``F.normalize(teacher, dim=-1)`` and ``F.normalize(projection(student), dim=-1)``: both sides
  scaled to unit L2 norm per token, then the mean absolute difference over every element.
  Teacher features are detached and taken in float32.
- weight: 1: the feature loss is simply added to the pixel loss (``loss += loss_v``).
- masking: the teacher draws the random mask and encodes only the visible patches; its
  ``ids_keep`` is handed to the student, so both see exactly the same visible tokens (75%
  masking, norm-pix targets). The teacher is in eval mode under ``torch.no_grad``. (The
  official teacher still runs all its blocks and even its decoder, unused; the paper's point
  is that only the first blocks are needed, which is what this module does.)

Our choices:
- ``layer`` counts blocks run (1-based): the official pair is ``student_layer=9`` of 12 and
  ``Teacher(layer=18)`` of 24; ``matching_layer`` gives the teacher layer at the same fraction of
  depth, ``default_layer`` three quarters of a depth.
- The teacher is truncated in place to its first ``layer`` blocks (no final norm): the other
  blocks are never run, never held on the device, never saved with resume checkpoints.
- Prefix (CLS) tokens are left out on both sides (the official loss includes the CLS token), so a
  teacher with a CLS token can teach a student without one and the reverse.
- The student's block output is read with a forward hook, removed after each forward, so
  ``MaskedAutoencoder`` itself needs no change.
- Teacher and student must share the token grid (same tokenizer class, token count, grid and
  patch size), which ``Teacher.check_compatible`` checks, since token i must mean the same part
  of the input on both sides.

Shapes: B samples, Lk visible tokens, Ds / Dt student / teacher widths.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalmae.masking import Masks
from modalmae.model.mae import Encoder, MAEOutput, MaskedAutoencoder
from modalmae.tokenizers.base import Tokenizer, Tokens

DEFAULT_WEIGHT = 1.0  # the official code adds the feature loss to the pixel loss unweighted


def default_layer(depth: int) -> int:
    """The block whose output is matched, as the official pairs it: three quarters of the depth
    (9 of ViT-B's 12, 18 of ViT-L's 24)."""
    return max(1, round(0.75 * depth))


def matching_layer(student_layer: int, *, student_depth: int, teacher_depth: int) -> int:
    """The teacher block at the same fraction of its depth as ``student_layer`` (9 of 12 -> 18 of 24)."""
    return max(1, min(teacher_depth, round(student_layer * teacher_depth / student_depth)))


def _check_layer(layer: int, depth: int, who: str) -> None:
    if not 1 <= layer <= depth:
        raise ValueError(f"{who} layer {layer} is out of range: the encoder has {depth} blocks (1..{depth})")


class Teacher(nn.Module):
    """A frozen encoder cut after its block ``layer``: ``features`` gives that block's output on
    the visible tokens.

    The encoder is taken over: its blocks after ``layer`` and its final norm are removed from it
    in place, and it is frozen (no gradients, eval mode whatever ``train()`` a parent calls)."""

    def __init__(self, encoder: Encoder, *, layer: int) -> None:
        super().__init__()
        transformer = encoder.transformer
        _check_layer(layer, len(transformer.blocks), "teacher")
        self.layer = layer
        self.depth = len(transformer.blocks)  # before the cut, for ``matching_layer``
        transformer.blocks = transformer.blocks[:layer]
        transformer.norm = nn.Identity()
        self.encoder = encoder.requires_grad_(False).eval()

    @property
    def dim(self) -> int:
        return self.encoder.config.encoder_dim

    @property
    def tokenizer(self) -> Tokenizer:
        return self.encoder.tokenizer

    def train(self, mode: bool = True) -> Teacher:
        """Stays in eval mode whatever ``mode`` a parent passes on."""
        return super().train(False)

    def check_compatible(self, tokenizer: Tokenizer) -> None:
        """Raise ``ValueError`` unless the student's ``tokenizer`` cuts the input into the same
        tokens as the teacher's (same class, count, grid and patch size): the student's
        ``ids_keep`` index the teacher's tokens."""
        mine = self.tokenizer
        fields = {
            "tokenizer": (type(tokenizer).__name__, type(mine).__name__),
            "num_tokens": (tokenizer.num_tokens, mine.num_tokens),
            "grid": (tokenizer.grid, mine.grid),
            "patch_dim": (tokenizer.patch_dim, mine.patch_dim),
        }
        differ = [f"{name} {s} (student) vs {t} (teacher)" for name, (s, t) in fields.items() if s != t]
        if differ:
            raise ValueError(
                "the teacher's token grid differs from the student's, so the student's visible tokens "
                "do not index the teacher's: " + "; ".join(differ) + ". Distil from a teacher tokenizing "
                "the same inputs into the same tokens (only the width may differ)."
            )

    @torch.no_grad()
    def features(self, x: Any, ids_keep: Tensor) -> Tensor:
        """Inputs (or the teacher tokenizer's ``Tokens`` of them) and the visible tokens
        ``ids_keep`` [B, Lk] -> [B, Lk, Dt] float32 output of block ``layer``, prefix tokens left
        out. From inputs, only the visible tokens are embedded."""
        if isinstance(x, Tokens):
            feats = self.encoder.encode(x, ids_keep)  # [B, prefix + Lk, Dt]: the truncated stack
        else:
            feats = self.encoder.encode_visible(self.tokenizer.tokens_at(x, ids_keep), ids_keep)
        return feats[:, self.encoder.num_prefix_tokens :].float()


class Distillation(nn.Module):
    """DMAE's feature term: the ``Teacher``, and a linear projection from the student's width to
    the teacher's, trained with the student.

    ``distillation(model, x, masks)`` runs the student once and returns ``(MAEOutput, feature
    loss)``; the training objective is ``out.loss + distillation.weight * feature_loss``. The
    projection must be in what the optimizer sees: train a ``DistilledMAE`` (the student and this
    module in one ``nn.Module``), or add ``distillation.projection.parameters()`` to it."""

    def __init__(self, teacher: Teacher, *, student: MaskedAutoencoder | Encoder, student_layer: int, weight: float = DEFAULT_WEIGHT) -> None:
        super().__init__()
        encoder = student.encoder if isinstance(student, MaskedAutoencoder) else student
        _check_layer(student_layer, len(encoder.transformer.blocks), "student")
        teacher.check_compatible(encoder.tokenizer)
        self.teacher = teacher
        self.student_layer = student_layer
        self.weight = weight
        self.projection = nn.Linear(encoder.config.encoder_dim, teacher.dim)  # [.., Ds] -> [.., Dt]

    def loss(self, student_feats: Tensor, teacher_feats: Tensor) -> Tensor:
        """[B, Lk, Ds] student and [B, Lk, Dt] teacher features -> scalar: mean absolute
        difference of the projected student and the teacher features, each scaled to unit L2
        norm per token (the official L1 between ``F.normalize``-d features)."""
        pred = F.normalize(self.projection(student_feats).float(), dim=-1)
        target = F.normalize(teacher_feats.detach().float(), dim=-1)
        return (pred - target).abs().mean()

    def forward(self, model: MaskedAutoencoder, x: Any, masks: Masks) -> tuple[MAEOutput, Tensor]:
        """One forward of the student ``model`` on ``x`` with ``masks`` -> (its ``MAEOutput``, the
        unweighted feature loss); the teacher encodes the same visible tokens ``masks.ids_keep``."""
        captured: list[Tensor] = []
        block = model.encoder.transformer.blocks[self.student_layer - 1]
        # An activation-checkpointed block runs twice; the recomputation gives the same output.
        handle = block.register_forward_hook(lambda _module, _args, output: captured.append(output))
        try:
            out = model(x, masks)
        finally:
            handle.remove()
        student_feats = captured[-1][:, model.encoder.num_prefix_tokens :]  # [B, Lk, Ds]
        return out, self.loss(student_feats, self.teacher.features(x, masks.ids_keep))


class DistilledMAE(nn.Module):
    """The student and its ``Distillation`` as one module, for the training loop to prepare (DDP
    then syncs the projection's gradients with the student's; the teacher's parameters need no
    gradient and are left out of the optimizer by ``requires_grad``). Save ``.student``."""

    def __init__(self, student: MaskedAutoencoder, distillation: Distillation) -> None:
        super().__init__()
        self.student = student
        self.distillation = distillation

    @property
    def tokenizer(self) -> Tokenizer:
        return self.student.tokenizer

    @property
    def weight(self) -> float:
        return self.distillation.weight

    def forward(self, x: Any, masks: Masks) -> tuple[MAEOutput, Tensor]:
        """-> (the student's ``MAEOutput``, the unweighted feature loss)."""
        return self.distillation(self.student, x, masks)
