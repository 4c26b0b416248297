"""transformers' ``VideoMAEConfig.to_dict()`` -> our tokenizer kwargs and ``MAEConfig``, from
config dicts written by hand (no reference model). Keys that an older or hand-written
``config.json`` leaves out take transformers' documented defaults (``hidden_act="gelu"``,
``use_mean_pooling=True``, ``norm_pix_loss=True``); what our model cannot represent is refused
with a message saying what."""

import pytest

from modalmae.convert.videomae import videomae_config


def hf_config(**overrides):
    """A tiny config dict with the keys ``VideoMAEConfig.to_dict()`` writes that the converter reads."""
    return {
        "image_size": 32, "patch_size": 16, "num_channels": 3, "num_frames": 4, "tubelet_size": 2,
        "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 192,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "use_mean_pooling": True, "norm_pix_loss": True,
        "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 128, **overrides,
    }


def test_keys_left_out_take_transformers_defaults():
    """Without hidden_act / use_mean_pooling / norm_pix_loss the config reads as transformers'
    defaults: exact GELU accepted, mean pooling (no final encoder LayerNorm), norm-pix loss. Called
    without has_fc_norm (VideoMAEModel / VideoMAEForPreTraining have no fc_norm), nothing is pooled."""
    sparse = {k: v for k, v in hf_config().items() if k not in ("hidden_act", "use_mean_pooling", "norm_pix_loss")}
    _, config = videomae_config(sparse)
    assert (config.norm_pix_loss, config.encoder_norm, config.pooled_norm) == (True, False, False)
    assert videomae_config(sparse) == videomae_config(hf_config())  # the same as writing the defaults out
    assert videomae_config(sparse, has_fc_norm=True)[1].pooled_norm is True  # a classifier's fc_norm is kept


def test_sizes_are_read_from_the_config():
    """Every size comes from the dict; the MLP ratio is intermediate_size / hidden_size (here 2)."""
    tokenizer, config = videomae_config(hf_config(intermediate_size=96, decoder_intermediate_size=64, use_mean_pooling=False, norm_pix_loss=False))
    assert tokenizer == {"embed_dim": 48, "num_frames": 4, "image_size": 32, "tubelet_size": 2, "patch_size": 16, "in_channels": 3}
    assert (config.encoder_dim, config.encoder_depth, config.encoder_heads, config.mlp_ratio) == (48, 2, 3, 2.0)
    assert (config.decoder_dim, config.decoder_depth, config.decoder_heads) == (32, 1, 2)
    assert (config.norm_eps, config.norm_pix_loss, config.encoder_norm, config.pooled_norm) == (1e-12, False, True, False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_act": "gelu_new"}, r"^unsupported activation 'gelu_new' \(only exact GELU\)$"),
        ({"hidden_act": "relu"}, r"^unsupported activation 'relu' \(only exact GELU\)$"),
        ({"decoder_intermediate_size": 64}, r"^encoder and decoder MLP ratios differ \(4\.0 vs 2\.0\); MAEConfig has one$"),
        ({"num_channels": 1}, r"^VideoMAE \(transformers\): the patch embedding takes 1 channels; only RGB \(3\)"),
    ],
)
def test_what_our_model_cannot_represent_is_refused(overrides, message):
    """Only exact GELU, one MLP ratio for encoder and decoder, and RGB clips are converted."""
    with pytest.raises(ValueError, match=message):
        videomae_config(hf_config(**overrides))
