"""Parity with transformers' VideoMAE (the reference runs here): random weights copied by our
converters must give the same outputs on the same clip and mask. The official repository's
.pth layout is built from the same random weights with its documented key names
(MCG-NJU/VideoMAE ``modeling_pretrain.py``: ``encoder.blocks.N.attn.qkv`` + ``q_bias`` /
``v_bias``, ``encoder_to_decoder``, ``decoder.head``), so it is checked against the reference too."""

import copy
import re

import pytest
import torch

from modalmae.checkpoint import load_encoder, load_pretrained, save_pretrained
from modalmae.convert import convert_checkpoint
from modalmae.convert.videomae import videomae_from_official, videomae_from_transformers
from modalmae.masking import masks_from_order, tube_masking
from modalmae.model import Encoder, MaskedAutoencoder

transformers = pytest.importorskip("transformers")

TINY = dict(
    image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
    num_attention_heads=3, intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2, decoder_intermediate_size=128, use_mean_pooling=False, norm_pix_loss=True,
)


def randomized(model):
    """post_init zeroes biases and the mask token; randomise everything so nothing agrees by accident."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def tiny_reference(cls=None, **overrides):
    config = transformers.VideoMAEConfig(**{**TINY, **overrides})
    return randomized((cls or transformers.VideoMAEForPreTraining)(config))


def sorted_masks(batch, grid, ratio, seed):
    """transformers keeps tokens in index order; give ours the same order so outputs line up."""
    g = torch.Generator().manual_seed(seed)
    masks = tube_masking(batch, grid, ratio, generator=g)
    order = torch.cat([masks.ids_keep.sort(1).values, masks.ids_masked.sort(1).values], dim=1)
    return masks_from_order(order, masks.ids_masked.shape[1])


def assert_same_pretraining_outputs(ref, ours, *, seed=1):
    # In float64: the reference embeds every tube with its Conv3d, ours only the visible ones with
    # the same weights as a matrix product, whose float32 sums round otherwise (~3e-7 on these
    # outputs); in float64 that rounding is ~1e-15 and any real difference stands out.
    ref, ours = copy.deepcopy(ref).double(), copy.deepcopy(ours).double()
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # ours: [B, C, T, H, W]
    masks = sorted_masks(2, ours.tokenizer.grid, 0.75, seed)
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2), bool_masked_pos=masks.mask.bool())
        got = ours(clip, masks)
    pred = got.pred[masks.mask.bool()].view(2, -1, got.pred.shape[-1])
    assert pred.shape == expected.logits.shape
    # The same arithmetic: equal to rounding. (An epsilon taken from the wrong place shows as
    # ~5e-7 at layer_norm_eps 1e-12 and ~3e-3 at 1e-2.)
    assert torch.allclose(pred, expected.logits, atol=1e-12, rtol=0), (pred - expected.logits).abs().max()
    assert torch.allclose(got.loss.double(), expected.loss, atol=2e-7, rtol=0), (got.loss, expected.loss)  # ours sums it in float32


def assert_same_layer_norms(ref, ours):
    """Every LayerNorm epsilon as transformers builds it: layer_norm_eps in the blocks and the
    encoder's norm, torch's default in the decoder's last norm and in fc_norm."""
    eps = {type(m).__name__ + ":" + name: m.eps for name, m in ref.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert {e for n, e in eps.items() if "decoder.norm" not in n and "fc_norm" not in n} == {ref.config.layer_norm_eps}
    assert ours.config.norm_eps == ref.config.layer_norm_eps
    for name, module in ref.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and name.endswith(("decoder.norm", "fc_norm")):
            ours_eps = ours.config.decoder_norm_eps if "decoder" in name else ours.config.pooled_norm_eps
            assert ours_eps == module.eps, name


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("eps", [1e-12, 1e-2])
def test_same_predictions_and_loss_as_transformers(norm_pix, eps):
    ref = tiny_reference(norm_pix_loss=norm_pix, layer_norm_eps=eps)
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict())
    assert isinstance(ours, MaskedAutoencoder)
    assert_same_layer_norms(ref, ours)
    assert_same_pretraining_outputs(ref, ours)


def test_mean_pooling_layout_has_no_final_norm():
    ref = tiny_reference(use_mean_pooling=True)
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict())
    assert isinstance(ours.encoder.transformer.norm, torch.nn.Identity)
    assert_same_pretraining_outputs(ref, ours)


def test_token_order_does_not_matter():
    ref = tiny_reference()
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict())
    clip = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = tube_masking(1, ours.tokenizer.grid, 0.5, generator=torch.Generator().manual_seed(2))  # shuffled order
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2), bool_masked_pos=masks.mask.bool())
        got = ours(clip, masks)
    assert torch.allclose(got.loss, expected.loss, atol=2e-7, rtol=0)


def transformers4_names(state):
    """Files written by transformers 4 name the query / value biases q_bias / v_bias."""
    out = {}
    for k, v in state.items():
        out[k.replace("attention.attention.query.bias", "attention.attention.q_bias").replace("attention.attention.value.bias", "attention.attention.v_bias")] = v
    assert any("q_bias" in k for k in out)
    return out


@pytest.mark.parametrize("mean_pooling", [False, True])
def test_encoder_matches_videomae_model(mean_pooling):
    ref = tiny_reference(transformers.VideoMAEModel, use_mean_pooling=mean_pooling)
    ours = videomae_from_transformers(transformers4_names(ref.state_dict()), ref.config.to_dict())
    assert isinstance(ours, Encoder)
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2)).last_hidden_state
        got = ours(clip)
    assert torch.allclose(got, expected, atol=2e-7, rtol=0), (got - expected).abs().max()


def test_attention_without_query_value_biases():
    """qv_bias=False (qkv_bias in transformers 4): the file has no query / value bias at all; the
    converted model must compute the same thing, i.e. all three biases zero."""
    ref = tiny_reference(qv_bias=False)
    state = ref.state_dict()
    assert not any(k.endswith(("query.bias", "value.bias", "q_bias", "v_bias")) for k in state)
    ours = videomae_from_transformers(state, ref.config.to_dict())
    assert not ours.encoder.transformer.blocks[0].attn.qkv.bias.any()
    assert_same_pretraining_outputs(ref, ours)


@pytest.mark.parametrize(
    ("cls", "key", "what", "ours_key"),
    [
        ("VideoMAEModel", "layernorm.weight", "VideoMAE encoder (transformers)", "transformer.norm.weight"),
        ("VideoMAEForPreTraining", "decoder.head.bias", "VideoMAE (transformers)", "decoder.head.bias"),
    ],
)
def test_a_mismatched_checkpoint_is_refused_naming_the_model_and_the_weight(cls, key, what, ours_key):
    ref = tiny_reference(getattr(transformers, cls))
    state = ref.state_dict()
    state[key] = torch.zeros(7)  # a weight of another model: 7 values where the config asks for more
    with pytest.raises(ValueError, match="^" + re.escape(f"{what}: shapes do not match: {ours_key}: (7,) vs ours")):
        videomae_from_transformers(state, ref.config.to_dict())


def test_classification_checkpoint_pools_like_the_reference():
    ref = tiny_reference(transformers.VideoMAEForVideoClassification, use_mean_pooling=True, num_labels=5)
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict())
    assert ours.fc_norm is not None
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2)).logits
        head = ref.classifier
        got = head(ours.pooled(clip))  # the reference's head on our pooled (fc_norm'ed) features
    assert torch.allclose(got, expected, atol=2e-7, rtol=0)


def to_official(hf_state):
    """transformers VideoMAEForPreTraining weights under the official repository's key names."""
    out = {
        "encoder.patch_embed.proj.weight": hf_state["videomae.embeddings.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": hf_state["videomae.embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": hf_state["videomae.layernorm.weight"],
        "encoder.norm.bias": hf_state["videomae.layernorm.bias"],
        "encoder_to_decoder.weight": hf_state["encoder_to_decoder.weight"],
        "mask_token": hf_state["mask_token"],
        "decoder.norm.weight": hf_state["decoder.norm.weight"],
        "decoder.norm.bias": hf_state["decoder.norm.bias"],
        "decoder.head.weight": hf_state["decoder.head.weight"],
        "decoder.head.bias": hf_state["decoder.head.bias"],
    }
    for hf, official, depth in (("videomae.encoder.layer", "encoder.blocks", 2), ("decoder.decoder_layers", "decoder.blocks", 2)):
        for i in range(depth):
            a, o = f"{hf}.{i}.attention.attention", f"{official}.{i}"
            out[f"{o}.attn.qkv.weight"] = torch.cat([hf_state[f"{a}.{n}.weight"] for n in ("query", "key", "value")])
            out[f"{o}.attn.q_bias"], out[f"{o}.attn.v_bias"] = hf_state[f"{a}.query.bias"], hf_state[f"{a}.value.bias"]
            names = {
                "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
                "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            }
            for ours_name, hf_name in names.items():
                for p in ("weight", "bias"):
                    out[f"{o}.{ours_name}.{p}"] = hf_state[f"{hf}.{i}.{hf_name}.{p}"]
    return out


def test_official_pretraining_layout_matches_the_reference(tmp_path):
    ref = tiny_reference(layer_norm_eps=1e-6)
    ref.decoder.norm.eps = 1e-6  # the official code builds every LayerNorm with eps 1e-6 (transformers: the decoder's last 1e-5)
    official = to_official(ref.state_dict())
    ours = videomae_from_official(official, num_frames=4, image_size=32, encoder_heads=3, decoder_heads=2)
    assert_same_pretraining_outputs(ref, ours)
    # the same through a .pth saved as the official scripts do ({"model": ...}), recognised by key names
    torch.save({"model": official, "epoch": 799}, tmp_path / "checkpoint-799.pth")
    model, extra = convert_checkpoint(tmp_path / "checkpoint-799.pth", num_frames=4, image_size=32, encoder_heads=3, decoder_heads=2)
    assert extra["converted_from"] == "videomae"
    assert_same_pretraining_outputs(ref, model)


def test_official_finetuned_layout_is_an_encoder_with_fc_norm():
    ref = tiny_reference(layer_norm_eps=1e-6)
    official = to_official(ref.state_dict())
    finetuned = {k[len("encoder."):]: v for k, v in official.items() if k.startswith("encoder.")}
    finetuned.pop("norm.weight"), finetuned.pop("norm.bias")
    finetuned["fc_norm.weight"], finetuned["fc_norm.bias"] = torch.rand(48) + 0.5, torch.randn(48)
    finetuned["head.weight"], finetuned["head.bias"] = torch.randn(400, 48), torch.randn(400)
    ours = videomae_from_official(finetuned, num_frames=4, image_size=32, encoder_heads=3)
    assert isinstance(ours, Encoder) and ours.fc_norm is not None
    assert isinstance(ours.transformer.norm, torch.nn.Identity)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        feats = ours(clip)
        expected = torch.nn.functional.layer_norm(feats.mean(1), (48,), finetuned["fc_norm.weight"], finetuned["fc_norm.bias"], eps=1e-6)
        assert torch.allclose(ours.pooled(clip), expected, atol=1e-6)


def test_converted_folder_round_trip(tmp_path):
    ref = tiny_reference(transformers.VideoMAEModel, use_mean_pooling=False)
    ref.save_pretrained(tmp_path / "hf")  # what a user downloads: config.json + model.safetensors
    encoder, config = load_encoder(tmp_path / "hf")
    assert config["parts"] == "encoder" and config["extra"]["video"]["sampling_rate"] == 4
    save_pretrained(encoder, tmp_path / "ours", extra=config["extra"])
    again, _ = load_encoder(tmp_path / "ours")
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(clip), encoder(clip))
        assert torch.allclose(again(clip), ref(clip.transpose(1, 2)).last_hidden_state, atol=1e-4)
    with pytest.raises(ValueError, match="load_encoder"):
        load_pretrained(tmp_path / "ours")


def test_a_transformers_checkpoint_needs_its_config_and_takes_no_size_options(tmp_path):
    ref = tiny_reference(transformers.VideoMAEModel)
    ref.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"records its sizes in config\.json; drop image_size, num_frames$"):
        convert_checkpoint(tmp_path / "hf", num_frames=8, image_size=64)
    model, extra = convert_checkpoint(tmp_path / "hf", sampling_rate=2)  # the frame stride is not a size: kept
    assert extra == {"video": {"sampling_rate": 2}, "converted_from": "videomae-transformers"}
    weights = tmp_path / "hf" / "model.safetensors"
    with pytest.raises(ValueError, match="^" + re.escape(f"{weights}: the transformers layout needs the folder with its config.json") + "$"):
        convert_checkpoint(weights, layout="videomae-transformers")


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)  # a real checkpoint file (raw pickle bytes fail torch.load's format check anyway)
    with pytest.raises(ValueError, match="weights only"):
        convert_checkpoint(path)


def test_a_config_that_is_not_rgb_is_refused():
    ref = tiny_reference()
    with pytest.raises(ValueError, match=r"^VideoMAE \(transformers\): the patch embedding takes 1 channels"):
        videomae_from_transformers(ref.state_dict(), {**ref.config.to_dict(), "num_channels": 1})
