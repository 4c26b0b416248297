"""Point-MAE's .pth layout (Pang-Yatian/Point-MAE ``models/Point_MAE.py``). The reference needs
CUDA extensions (knn_cuda, chamfer) that do not run here, so the state dict is built to the
documented key names and shapes with random values, and the published forward pass is restated
below in plain functional torch (mini-PointNet with BatchNorm in eval mode, centre MLP added
before every block, qkv without bias, LayerNorm eps 1e-5, decoder on [visible, mask tokens] with
no projection, 1 x 1 convolution to the group's points). Our converted model must match it."""

import re

import pytest
import torch
import torch.nn.functional as F

from modalmae.convert import convert_checkpoint, detect_layout
from modalmae.convert.pointmae import pointmae_from_official
from modalmae.masking import masks_from_order

D, HEADS, DEPTH, DEC_DEPTH, K = 48, 3, 2, 1, 8


def block_shapes(prefix, mlp=4):
    return {
        f"{prefix}.norm1.weight": (D,), f"{prefix}.norm1.bias": (D,), f"{prefix}.attn.qkv.weight": (3 * D, D),
        f"{prefix}.attn.proj.weight": (D, D), f"{prefix}.attn.proj.bias": (D,), f"{prefix}.norm2.weight": (D,),
        f"{prefix}.norm2.bias": (D,), f"{prefix}.mlp.fc1.weight": (mlp * D, D), f"{prefix}.mlp.fc1.bias": (mlp * D,),
        f"{prefix}.mlp.fc2.weight": (D, mlp * D), f"{prefix}.mlp.fc2.bias": (D,),
    }


def pointmae_state(mlp=4):
    shapes = {
        "MAE_encoder.encoder.first_conv.0.weight": (128, 3, 1), "MAE_encoder.encoder.first_conv.0.bias": (128,),
        "MAE_encoder.encoder.first_conv.3.weight": (256, 128, 1), "MAE_encoder.encoder.first_conv.3.bias": (256,),
        "MAE_encoder.encoder.second_conv.0.weight": (512, 512, 1), "MAE_encoder.encoder.second_conv.0.bias": (512,),
        "MAE_encoder.encoder.second_conv.3.weight": (D, 512, 1), "MAE_encoder.encoder.second_conv.3.bias": (D,),
        "MAE_encoder.pos_embed.0.weight": (128, 3), "MAE_encoder.pos_embed.0.bias": (128,),
        "MAE_encoder.pos_embed.2.weight": (D, 128), "MAE_encoder.pos_embed.2.bias": (D,),
        "MAE_encoder.norm.weight": (D,), "MAE_encoder.norm.bias": (D,),
        "mask_token": (1, 1, D),
        "decoder_pos_embed.0.weight": (128, 3), "decoder_pos_embed.0.bias": (128,),
        "decoder_pos_embed.2.weight": (D, 128), "decoder_pos_embed.2.bias": (D,),
        "MAE_decoder.norm.weight": (D,), "MAE_decoder.norm.bias": (D,),
        "increase_dim.0.weight": (3 * K, D, 1), "increase_dim.0.bias": (3 * K,),
    }
    for i in range(DEPTH):
        shapes.update(block_shapes(f"MAE_encoder.blocks.blocks.{i}", mlp))
    for i in range(DEC_DEPTH):
        shapes.update(block_shapes(f"MAE_decoder.blocks.{i}", mlp))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}
    for conv, ch in (("first_conv", 128), ("second_conv", 512)):
        bn = f"MAE_encoder.encoder.{conv}.1"
        state[f"{bn}.weight"], state[f"{bn}.bias"] = torch.rand(ch, generator=g) + 0.5, torch.randn(ch, generator=g) * 0.1
        state[f"{bn}.running_mean"], state[f"{bn}.running_var"] = torch.randn(ch, generator=g) * 0.1, torch.rand(ch, generator=g) + 0.5
        state[f"{bn}.num_batches_tracked"] = torch.tensor(1000)
    return state


def reference_forward(s, groups, centres, visible, masked):
    """Point-MAE's published forward, restated: groups [B, G, k, 3], centres [B, G, 3]."""
    def pointnet(pts):  # [BG, k, 3] -> [BG, D]
        def conv_bn(x, name):
            x = F.conv1d(x, s[f"{name}.0.weight"], s[f"{name}.0.bias"])
            x = F.batch_norm(x, s[f"{name}.1.running_mean"], s[f"{name}.1.running_var"], s[f"{name}.1.weight"], s[f"{name}.1.bias"], eps=1e-5)
            return F.conv1d(F.relu(x), s[f"{name}.3.weight"], s[f"{name}.3.bias"])
        x = conv_bn(pts.transpose(1, 2), "MAE_encoder.encoder.first_conv")
        x = torch.cat([x.max(2, keepdim=True).values.expand_as(x), x], 1)
        return conv_bn(x, "MAE_encoder.encoder.second_conv").max(2).values

    def mlp(x, name):
        return F.linear(F.gelu(F.linear(x, s[f"{name}.0.weight"], s[f"{name}.0.bias"])), s[f"{name}.2.weight"], s[f"{name}.2.bias"])

    def block(x, p):
        h = F.layer_norm(x, (D,), s[f"{p}.norm1.weight"], s[f"{p}.norm1.bias"], eps=1e-5)
        q, k, v = F.linear(h, s[f"{p}.attn.qkv.weight"]).view(*x.shape[:2], 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (D // HEADS) ** -0.5).softmax(-1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(x.shape), s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"])
        h = F.layer_norm(x, (D,), s[f"{p}.norm2.weight"], s[f"{p}.norm2.bias"], eps=1e-5)
        return x + F.linear(F.gelu(F.linear(h, s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"])), s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])

    b, g = groups.shape[:2]
    tokens = pointnet(groups.reshape(b * g, K, 3)).view(b, g, D)
    take = lambda t, ids: torch.gather(t, 1, ids[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    x, pos = take(tokens, visible), mlp(take(centres, visible), "MAE_encoder.pos_embed")
    for i in range(DEPTH):
        x = block(x + pos, f"MAE_encoder.blocks.blocks.{i}")
    x = F.layer_norm(x, (D,), s["MAE_encoder.norm.weight"], s["MAE_encoder.norm.bias"], eps=1e-5)
    x = torch.cat([x, s["mask_token"].expand(b, masked.shape[1], -1)], 1)
    pos = mlp(torch.cat([take(centres, visible), take(centres, masked)], 1), "decoder_pos_embed")
    for i in range(DEC_DEPTH):
        x = block(x + pos, f"MAE_decoder.blocks.{i}")
    x = F.layer_norm(x[:, -masked.shape[1]:], (D,), s["MAE_decoder.norm.weight"], s["MAE_decoder.norm.bias"], eps=1e-5)
    return F.conv1d(x.transpose(1, 2), s["increase_dim.0.weight"], s["increase_dim.0.bias"]).transpose(1, 2)  # [B, M, 3k]


def test_matches_the_published_forward(tmp_path):
    state = pointmae_state()
    assert detect_layout(state, None) == "pointmae"
    ours = pointmae_from_official(state, num_groups=16, encoder_heads=HEADS, decoder_heads=HEADS)
    assert ours.tokenizer.group_size == K and ours.config.norm_eps == 1e-5
    g = torch.Generator().manual_seed(1)
    packed = torch.randn(2, 16, 1 + K, 3, generator=g)  # [B, G, 1 + k, 3]: centre, then relative points
    order = torch.rand(2, 16, generator=g).argsort(1)
    masks = masks_from_order(order, 10)
    with torch.no_grad():
        got = ours(packed, masks)
        expected = reference_forward(state, packed[:, :, 1:], packed[:, :, 0], masks.ids_keep, masks.ids_masked)
    pred = torch.gather(got.pred, 1, masks.ids_masked[..., None].expand(-1, -1, 3 * K))
    assert torch.allclose(pred, expected, atol=1e-4), (pred - expected).abs().max()
    # the BatchNorm statistics came along, and the .pth route ({"base_model": ...}) gives the same model
    assert torch.equal(ours.encoder.tokenizer.embed.first[1].running_var, state["MAE_encoder.encoder.first_conv.1.running_var"])
    torch.save({"base_model": state, "epoch": 300}, tmp_path / "pretrain.pth")
    model, extra = convert_checkpoint(tmp_path / "pretrain.pth", num_groups=16, encoder_heads=HEADS, decoder_heads=HEADS)
    assert extra["converted_from"] == "pointmae"
    with torch.no_grad():
        assert torch.allclose(model(packed, masks).pred, got.pred, atol=1e-6)


def test_the_defaults_are_point_maes_published_config():
    """Without options the converter builds Point-MAE's pretraining setup: 64 groups, 6 heads in
    the encoder and the decoder, Chamfer-L2, no norm-pix; the sizes it reads come from the state
    dict (width, depths, MLP ratio, group size); anything else is refused with the reason."""
    ours = pointmae_from_official(pointmae_state())
    c = ours.config
    assert (ours.tokenizer.num_groups, c.encoder_heads, c.decoder_heads) == (64, 6, 6)
    assert ours.tokenizer.loss_name == "chamfer_l2" and c.norm_pix_loss is False
    assert (c.encoder_dim, c.decoder_dim, c.encoder_depth, c.decoder_depth, c.mlp_ratio, ours.tokenizer.group_size) == (D, D, DEPTH, DEC_DEPTH, 4.0, K)
    assert pointmae_from_official(pointmae_state(), loss="chamfer_l1").tokenizer.loss_name == "chamfer_l1"
    with pytest.raises(KeyError, match=r"not a Point-MAE pretraining state dict: no MAE_encoder\.norm\.weight \(fine-tuned models are not supported\)"):
        pointmae_from_official({k: v for k, v in pointmae_state().items() if k != "MAE_encoder.norm.weight"})


def test_the_mlp_ratio_is_read_from_the_weights():
    """Point-MAE's blocks are 4x wide, but a file with other blocks is taken as it is."""
    state = pointmae_state(mlp=2)
    ours = pointmae_from_official(state)
    assert ours.config.mlp_ratio == 2.0
    assert torch.equal(ours.encoder.transformer.blocks[0].mlp.fc1.weight, state["MAE_encoder.blocks.blocks.0.mlp.fc1.weight"])


def test_a_mismatched_file_is_refused_naming_point_mae_and_the_weight():
    state = pointmae_state()
    state["mask_token"] = torch.zeros(1, 1, 7)  # a mask token of another width
    with pytest.raises(ValueError, match="^" + re.escape(f"Point-MAE: shapes do not match: decoder.mask_token: (1, 1, 7) vs ours (1, 1, {D})")):
        pointmae_from_official(state)
