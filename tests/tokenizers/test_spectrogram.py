"""SpectrogramPatches: Audio-MAE's time-major grid of (time x frequency) patches, and its inverse."""

import re

import pytest
import torch
from einops import EinopsError

from modalmae.tokenizers.spectrogram import SpectrogramPatches


def tokenizer():
    """6 frames x 6 bins in 3 x 2 patches: a 2 x 3 grid, patches taller than wide."""
    return SpectrogramPatches(embed_dim=8, num_frames=6, num_mel_bins=6, patch_size=(3, 2))


def test_patches_are_time_major_and_unpatchify_inverts_them():
    """Token i * 3 + j is the patch at time block i, frequency block j, its values row by row
    (frame-major); unpatchify puts every value back where it came from."""
    tok = tokenizer()
    spec = torch.arange(36.0).view(1, 6, 6)  # value = 6 * frame + bin
    patches = tok.patchify(spec)
    assert patches.shape == (1, 6, 6)
    for i in range(2):
        for j in range(3):
            want = [6 * (3 * i + p) + 2 * j + q for p in range(3) for q in range(2)]
            assert patches[0, i * 3 + j].tolist() == want
    torch.testing.assert_close(tok.unpatchify(patches), spec, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("tokens", "patch_dim"),
    [(12, 6), (6, 12)],  # twice the grid's tokens; patches of twice the size
)
def test_unpatchify_refuses_patches_that_do_not_fit_its_grid(tokens, patch_dim):
    """unpatchify rebuilds this tokenizer's [B, 6, 6] spectrogram; patches of another count or
    size are an error, not a differently shaped spectrogram."""
    with pytest.raises(EinopsError):
        tokenizer().unpatchify(torch.zeros(1, tokens, patch_dim))


def test_defaults_are_audiomaes_and_bad_shapes_are_refused_by_exact_message():
    """Audio-MAE: 1024 frames x 128 mel bins in 16 x 16 patches, width 768."""
    tok = SpectrogramPatches()
    assert (tok.embed_dim, tok.num_frames, tok.num_mel_bins) == (768, 1024, 128)
    for frames, bins in ((100, 128), (1024, 100)):  # one axis off at a time
        with pytest.raises(ValueError, match="^" + re.escape(f"spectrogram {frames}x{bins} is not divisible into 16x16 patches") + "$"):
            SpectrogramPatches(num_frames=frames, num_mel_bins=bins)
    small = SpectrogramPatches(embed_dim=48, num_frames=32, num_mel_bins=16, patch_size=8)
    with pytest.raises(ValueError, match="^" + re.escape("expected spectrograms of 32 frames x 16 bins, got (30, 16)") + "$"):
        small(torch.zeros(2, 30, 16))
