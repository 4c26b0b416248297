"""transformers' ViTMAE, the reference for MAE's timm layout (MAE's images, Audio-MAE's
fbank): tiny models with random weights, and those weights under timm's key names."""

import torch


def vitmae_config(*, channels: int, norm_pix: bool, mask_ratio: float = 0.75):
    import transformers

    return transformers.ViTMAEConfig(
        image_size=64, patch_size=16, num_channels=channels, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, mask_ratio=mask_ratio, norm_pix_loss=norm_pix,
    )


def tiny_vitmae(*, channels: int, norm_pix: bool, mask_ratio: float = 0.75):
    import transformers

    model = transformers.ViTMAEForPreTraining(vitmae_config(channels=channels, norm_pix=norm_pix, mask_ratio=mask_ratio))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # positions too: the converter copies tables, it does not recompute them
        model.decoder.decoder_pos_embed[:, 0] = 0  # the CLS row of a sin-cos table
    return model.eval()


def to_timm(hf: dict) -> dict:
    """ViTMAE weights (transformers 5 names) under MAE's and Audio-MAE's timm key names."""
    out = {
        "patch_embed.proj.weight": hf["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["vit.embeddings.patch_embeddings.projection.bias"],
        "cls_token": hf["vit.embeddings.cls_token"],
        "pos_embed": hf["vit.embeddings.position_embeddings"],
        "norm.weight": hf["vit.layernorm.weight"], "norm.bias": hf["vit.layernorm.bias"],
        "decoder_embed.weight": hf["decoder.decoder_embed.weight"], "decoder_embed.bias": hf["decoder.decoder_embed.bias"],
        "mask_token": hf["decoder.mask_token"],
        "decoder_pos_embed": hf["decoder.decoder_pos_embed"],
        "decoder_norm.weight": hf["decoder.decoder_norm.weight"], "decoder_norm.bias": hf["decoder.decoder_norm.bias"],
        "decoder_pred.weight": hf["decoder.decoder_pred.weight"], "decoder_pred.bias": hf["decoder.decoder_pred.bias"],
    }
    for src, dst in (("vit.layers", "blocks"), ("decoder.decoder_layers", "decoder_blocks")):
        for i in range(2):
            s, d = f"{src}.{i}", f"{dst}.{i}"
            out[f"{d}.attn.qkv.weight"] = torch.cat([hf[f"{s}.attention.{n}_proj.weight"] for n in "qkv"])
            out[f"{d}.attn.qkv.bias"] = torch.cat([hf[f"{s}.attention.{n}_proj.bias"] for n in "qkv"])
            names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
            for ours, theirs in names.items():
                for p in ("weight", "bias"):
                    out[f"{d}.{ours}.{p}"] = hf[f"{s}.{theirs}.{p}"]
    return out
