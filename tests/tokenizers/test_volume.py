"""VolumePatches (BM-MAE): 3-D patches per MRI sequence, its defaults, refusals and positions."""

import pytest
import torch

from modalmae.tokenizers.base import Tokenizer
from modalmae.tokenizers.positions import sincos_grid
from modalmae.tokenizers.volume import SequencePositions, VolumePatches


def small():  # 3 sequences of 2 x 1 x 3 patches of 4^3
    return VolumePatches(embed_dim=12, sequences=("t1", "t2", "flair"), volume_size=(8, 4, 12), patch_size=4)


def test_defaults_are_bm_maes():
    """BM-MAE: t1, t1ce, t2, flair at 128^3 in 16^3 patches, 8^3 = 512 tokens each, ViT-B width."""
    tok = VolumePatches()
    assert isinstance(tok, Tokenizer)
    assert tok.config() == {"embed_dim": 768, "sequences": ["t1", "t1ce", "t2", "flair"], "volume_size": [128, 128, 128], "patch_size": 16}
    assert tok.sequence_grid == (8, 8, 8) and tok.tokens_per_sequence == 512 and tok.num_tokens == 4 * 512
    assert tok.patch_dim == 16**3 and tok.positions().shape == (1, 4 * 512, 768)


def test_tokens_are_sequence_by_sequence_each_with_its_own_projection():
    tok = small()
    x = torch.randn(2, 3, 8, 4, 12)
    tokens = tok({"volume": x, "present": torch.ones(2, 3, dtype=torch.bool)})
    assert tokens.embeddings.shape == (2, 18, 12) and tokens.targets.shape == (2, 18, 64)
    # token 6 + 4 = patch 4 of sequence 1: grid (2, 1, 3) row-major -> x = 1, y = 0, z = 1
    patch = x[:, 1, 4:8, 0:4, 4:8].reshape(2, -1)
    assert torch.equal(tokens.targets[:, 10], patch)
    assert torch.allclose(tokens.embeddings[:, 10], tok.proj[1](patch))
    assert torch.equal(tok.unpatchify(tokens.targets), x)


def test_positions_are_a_shared_sincos_grid_plus_one_learned_embedding_per_sequence():
    tok = small()
    positions = tok.positions()[0].view(3, 6, 12)  # [S, G, D]
    sequence = tok.positions.sequence.detach()
    assert sequence.abs().min() > 0  # learned and randomly initialised, so distinguishable
    for s in range(3):
        assert torch.allclose(positions[s], sincos_grid((2, 1, 3), 12) + sequence[s])


def test_channels_beyond_a_multiple_of_six_carry_no_grid_position():
    """3 axes x (sin, cos): a width of 16 has 12 positional channels; the other 4 only the sequence."""
    pos = SequencePositions((2, 1, 3), 2, 16)
    with torch.no_grad():
        pos.sequence.zero_()
    table = pos()[0]
    assert torch.equal(table[:6, :12], sincos_grid((2, 1, 3), 12)) and torch.equal(table[:, 12:], torch.zeros(12, 4))
    assert torch.equal(table[6:], table[:6])  # the same grid for the second sequence


def test_sequence_embeddings_start_like_maes_learned_tokens():
    """normal(std=0.02), the MAE family's initialisation of learned embeddings."""
    torch.manual_seed(0)
    sequence = SequencePositions((1, 1, 1), 4, 768).sequence.detach()
    assert abs(sequence.std().item() - 0.02) < 0.002 and abs(sequence.mean().item()) < 0.002


def test_refusals_are_explained():
    with pytest.raises(ValueError, match=r"volume \(8, 4, 10\) is not divisible into 4\^3 patches"):
        VolumePatches(embed_dim=12, volume_size=(8, 4, 10), patch_size=4)
    tok = small()
    with pytest.raises(ValueError, match=r"expected volumes \[B, 3, 8, 4, 12\], got \[2, 3, 8, 4, 8\]"):
        tok(torch.randn(2, 3, 8, 4, 8))
    with pytest.raises(ValueError, match=r"expected volumes \[B, 3, 8, 4, 12\], got \[1, 4, 8, 4, 12\]"):
        tok.tokens_at({"volume": torch.randn(1, 4, 8, 4, 12)}, torch.zeros(1, 2, dtype=torch.long))
