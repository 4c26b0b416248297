"""What a joint model refuses to be built from (with messages that say why), the settings it keeps
per modality, how it orders modalities, and which modality it can hand out an encoder for."""

import re

import pytest
import torch

from modalmae.model import mae_tiny
from modalmae.model.multimodal import MultiModalMAE
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes


def config(**overrides):
    return mae_tiny(**{"encoder_dim": 32, "encoder_depth": 2, "encoder_heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **overrides})


def tokenizers(video_dim=32):
    return {
        "audio": SpectrogramPatches(embed_dim=32, num_frames=32, num_mel_bins=16, patch_size=8),  # 4 x 2 = 8 tokens
        "video": VideoTubes(embed_dim=video_dim, num_frames=4, image_size=16, tubelet_size=2, patch_size=8),  # 2 x 2 x 2 = 8 tokens
    }


def refused(message):
    """pytest.raises on exactly this message."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    "overrides", [{"decoder_window": (2, 2)}, {"cls_token": True}, {"pooled_norm": True}, {"modality_embed": True}],
    ids=["decoder_window", "cls_token", "pooled_norm", "modality_embed"],
)
def test_each_single_model_feature_is_refused_on_its_own(overrides):
    """Local decoder attention, a CLS token, a pooled norm or a config modality embedding: any one
    of them alone is refused (the joint model has global attention and embeddings of its own)."""
    with refused("a joint model has global decoder attention, no CLS token, no pooled norm and modality embeddings of its own"):
        MultiModalMAE(tokenizers(), config(**overrides))


@pytest.mark.parametrize("depth", [-1, 3])
def test_specific_depth_must_fit_in_the_encoder(depth):
    with refused(f"specific_depth {depth} must be in 0..2 (the encoder's depth)"):
        MultiModalMAE(tokenizers(), config(), specific_depth=depth)
    assert MultiModalMAE(tokenizers(), config(), specific_depth=2).specific_depth == 2  # the whole encoder may be specific


def test_a_tokenizer_of_another_width_is_named():
    with refused("video tokenizer embed_dim 48 != encoder width 32"):
        MultiModalMAE(tokenizers(video_dim=48), config())


@pytest.mark.parametrize(
    "loss_weights, norm_pix, named",
    [({"speech": 2.0}, None, "speech"), (None, {"points": False}, "points"), ({"speech": 2.0, "audio": 1.0}, {"points": False}, "points, speech")],
)
def test_settings_for_a_modality_the_model_lacks_are_refused(loss_weights, norm_pix, named):
    """A loss weight or a norm-pix setting for a modality without a tokenizer is a typo: every
    such modality is named (sorted), with the model's own modalities in their order."""
    with refused(f"settings for {named}: the model's modalities are audio, video"):
        MultiModalMAE(tokenizers(), config(), loss_weights=loss_weights, norm_pix=norm_pix)


def test_settings_per_modality_and_their_defaults():
    """Unset loss weights are 1 and unset norm-pix follows the config's ``norm_pix_loss``."""
    model = MultiModalMAE(tokenizers(), config(), loss_weights={"video": 0.5}, norm_pix={"audio": False})
    assert model.loss_weights == {"audio": 1.0, "video": 0.5} and model.norm_pix == {"audio": False, "video": True}
    plain = MultiModalMAE(tokenizers(), config(norm_pix_loss=False))
    assert plain.loss_weights == {"audio": 1.0, "video": 1.0} and plain.norm_pix == {"audio": False, "video": False}


def test_every_layer_norm_takes_the_config_epsilon():
    """Specific blocks, shared blocks and decoder all normalize with ``config.norm_eps``."""
    model = MultiModalMAE(tokenizers(), config(norm_eps=1e-3), specific_depth=1)
    norms = [m for part in (model.specific, model.shared, model.decoder) for m in part.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 2 + 1 + 2 + 1  # 2 per block: 1 specific block per modality, 1 shared + final, 1 decoder + final
    assert {n.eps for n in norms} == {1e-3}


def test_learned_tokens_start_as_mae_initialises_them():
    """The mask token and the modality embeddings start from N(0, 0.02^2), as MAE's mask token."""
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), config())
    values = torch.cat([p.flatten() for p in (model.mask_token, *model.modality_embed.values(), *model.decoder_modality_embed.values())])
    assert values.numel() == 16 + 2 * 32 + 2 * 16
    assert 0.015 < values.std().item() < 0.027 and abs(values.mean().item()) < 0.006


def test_order_is_the_models_and_refuses_unknown_modalities():
    model = MultiModalMAE(tokenizers(), config())
    assert model.order({"video": None, "audio": None}) == ["audio", "video"]
    assert model.order({"video": None}) == ["video"]
    with refused("no tokenizer for image, speech; this model's modalities: audio, video"):
        model.order({"speech": None, "audio": None, "image": None})


def test_encoder_for_names_the_models_modalities():
    model = MultiModalMAE(tokenizers(), config())
    with refused("no points in this model; its modalities: audio, video"):
        model.encoder_for("points")
    encoder = model.encoder_for("video")
    assert isinstance(encoder.tokenizer, VideoTubes) and len(encoder.transformer.blocks) == 2


class GainedPatches(SpectrogramPatches):
    """A user's tokenizer whose ``config()`` forgets an argument that adds a parameter."""

    def __init__(self, *, gain: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if gain:
            self.gain = torch.nn.Parameter(torch.ones(1))


def test_encoder_for_refuses_to_drop_weights_it_cannot_place():
    """The standalone encoder is rebuilt from the tokenizer's ``config()``: when that rebuild lacks
    a weight of the trained tokenizer, handing out the encoder without it would be silently wrong."""
    model = MultiModalMAE({"audio": GainedPatches(gain=True, embed_dim=32, num_frames=32, num_mel_bins=16, patch_size=8)}, config())
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*tokenizer\.gain"):
        model.encoder_for("audio")
