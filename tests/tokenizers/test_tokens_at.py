"""``Tokenizer.tokens_at``: what a masked autoencoder uses of the tokens, computed only where it
is used, must be what tokenizing everything and gathering gives (the grid tokenizers' fast paths
apply their convolution as a linear layer: equal to float rounding, and the same weights)."""

import pytest
import torch

from modalmae.tokenizers.base import MaskedTokens, TokenizerBase, gather_tokens
from modalmae.tokenizers.image import ImagePatches
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes
from modalmae.tokenizers.volume import VolumePatches

B = 3


def video():  # 2 x 4 x 6 = 48 tubes of 2 x 8 x 8 (non-square, so rows and columns cannot be swapped unnoticed)
    return VideoTubes(embed_dim=48, num_frames=4, image_size=(32, 48), tubelet_size=2, patch_size=8), torch.randn(B, 3, 4, 32, 48)


def image():  # 4 x 6 patches of 8 x 8
    return ImagePatches(embed_dim=48, image_size=(32, 48), patch_size=8), torch.randn(B, 3, 32, 48)


def spectrogram():  # 4 x 4 patches of 16 frames x 8 bins, given as [B, 1, T, F]
    return SpectrogramPatches(embed_dim=48, num_frames=64, num_mel_bins=32, patch_size=(16, 8)), torch.randn(B, 1, 64, 32)


def volume():  # 3 sequences of 2 x 1 x 3 patches of 8^3
    x = {"volume": torch.randn(B, 3, 16, 8, 24), "present": torch.ones(B, 3, dtype=torch.bool)}
    return VolumePatches(embed_dim=48, sequences=("t1", "t2", "flair"), volume_size=(16, 8, 24), patch_size=8), x


def points():  # no fast path: the default gathers
    return PointGroups(embed_dim=48, num_groups=8, group_size=4), torch.randn(B, 64, 3)


GRID = [video, image, spectrogram, volume]


def random_ids(num_tokens: int, seed: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random (ids_keep [B, keep], ids_predict [B, L - keep]), in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(num_tokens, generator=gen) for _ in range(B)])
    return order[:, :keep], order[:, keep:]


@pytest.mark.parametrize("make", [*GRID, points])
def test_tokens_at_is_the_full_tokenization_gathered(make):
    torch.manual_seed(0)
    tok, x = make()
    ids_keep, ids_predict = random_ids(tok.num_tokens, 1, tok.num_tokens // 4)
    full = tok(x)
    got = tok.tokens_at(x, ids_keep, ids_predict)
    assert isinstance(got, MaskedTokens)
    torch.testing.assert_close(got.embeddings, gather_tokens(full.embeddings, ids_keep), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.targets, gather_tokens(full.targets, ids_predict))  # the same values, only moved
    assert torch.equal(got.positions, full.positions)
    assert (got.coords is None) == (full.coords is None) and (got.coords is None or torch.equal(got.coords, full.coords))
    # no targets unless asked
    assert tok.tokens_at(x, ids_keep).targets is None


@pytest.mark.parametrize("make", GRID)
def test_repeated_ids_and_one_sample_alone(make):
    """Padding slots repeat tokens; any ids in [0, L) in any order, and a batch of one."""
    torch.manual_seed(0)
    tok, x = make()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, tok.num_tokens, (B, 2 * tok.num_tokens), generator=gen)
    full = tok(x)
    got = tok.tokens_at(x, ids, ids)
    torch.testing.assert_close(got.embeddings, gather_tokens(full.embeddings, ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.targets, gather_tokens(full.targets, ids))
    one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    torch.testing.assert_close(tok.tokens_at(one, ids[:1], ids[:1]).embeddings, gather_tokens(tok(one).embeddings, ids[:1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", GRID)
def test_the_gradients_reach_the_same_weights(make):
    """The fast path trains the very parameters the full one does (checkpoints and converters
    see no difference), with the same gradients."""
    torch.manual_seed(0)
    tok, x = make()
    ids_keep, _ = random_ids(tok.num_tokens, 3, tok.num_tokens // 3)
    weight = torch.randn(B, ids_keep.shape[1], tok.embed_dim)
    (gather_tokens(tok(x).embeddings, ids_keep) * weight).sum().backward()
    full = {name: p.grad.clone() for name, p in tok.named_parameters() if p.grad is not None}
    tok.zero_grad(set_to_none=True)
    (tok.tokens_at(x, ids_keep).embeddings * weight).sum().backward()
    fast = {name: p.grad for name, p in tok.named_parameters() if p.grad is not None}
    assert fast.keys() == full.keys() and full
    for name in full:
        torch.testing.assert_close(fast[name], full[name], atol=1e-4, rtol=1e-5, msg=name)


@pytest.mark.parametrize("make", GRID)
def test_only_the_visible_tokens_are_embedded(make):
    """The projection sees the Lk visible patches, not all L (a convolution is not run at all)."""
    tok, x = make()
    ids_keep, ids_predict = random_ids(tok.num_tokens, 4, 2)
    rows = []
    for module in tok.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            module.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[:-1].numel()))
    tok.tokens_at(x, ids_keep, ids_predict)
    assert sum(rows) <= B * 2


def test_a_sequence_without_visible_tokens():
    """MRI: a sequence none of whose patches is visible gets no embedding, and no error."""
    tok, x = volume()
    ids_keep = torch.tensor([[0, 1, 12], [13, 2, 3], [15, 14, 0]])  # sequence 1 (tokens 6..11) never visible
    full = tok(x)
    got = tok.tokens_at(x, ids_keep, ids_keep)
    torch.testing.assert_close(got.embeddings, gather_tokens(full.embeddings, ids_keep), atol=1e-5, rtol=1e-5)


def test_grid_tokenizers_have_a_fast_path_and_point_groups_the_default():
    """Point groups' embedding normalizes over the batch of groups (BatchNorm), so only
    tokenizing every group is exact; they keep the gathering default."""
    assert PointGroups.tokens_at is TokenizerBase.tokens_at
    assert all(make()[0].__class__.tokens_at is not TokenizerBase.tokens_at for make in GRID)


@pytest.mark.parametrize("make", GRID)
def test_trained_weights_and_biases_carry_over(make):
    """A trained or converted tokenizer has non-zero biases (a fresh one zeroes its patch
    projection's): the fast path applies every parameter as the full tokenization does."""
    torch.manual_seed(0)
    tok, x = make()
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(torch.randn_like(p))
    ids_keep, _ = random_ids(tok.num_tokens, 5, tok.num_tokens // 2)
    torch.testing.assert_close(tok.tokens_at(x, ids_keep).embeddings, gather_tokens(tok(x).embeddings, ids_keep), atol=1e-4, rtol=1e-5)
