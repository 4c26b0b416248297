"""Save and load trained models as a folder: ``model.safetensors`` + ``config.json``.

``config.json`` holds everything needed to rebuild the module before the weights go in: the
modality, the tokenizer's class name and keyword arguments (the class is looked up in
``modalmae.modalities``, never imported by name), the ``MAEConfig``, and free-form ``extra``
entries (what the modality's sample decoder needs to process data exactly as in training:
the audio recipe's ``AudioFrontend`` settings, the video frame stride, ...), and ``parts``:
``"mae"`` (encoder + decoder) or ``"encoder"`` (an encoder alone, e.g. converted from a
published classification checkpoint), or ``"multimodal"``: a joint model
(``modalmae.model.multimodal``), whose config names a tokenizer per modality under
``modalities`` and its ``joint`` settings; ``load_encoder(path, modality=...)`` takes one
modality's encoder out of it. Loading never unpickles anything.

    from modalmae.checkpoint import load_encoder
    encoder, cfg = load_encoder("runs/audio_mae/model")   # or a published checkpoint (converted)
    feats = encoder.pooled(fbank)  # [B, D]

Anything unreadable raises ``CheckpointError`` (a ``ValueError``) naming the path and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from modalmae import __version__
from modalmae.modalities import MODALITIES, spec_of_tokenizer
from modalmae.model import Encoder, MAEConfig, MaskedAutoencoder
from modalmae.model.multimodal import MultiModalMAE

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names it and says why."""


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(
    model: MaskedAutoencoder | Encoder | MultiModalMAE, directory: str | os.PathLike, *, extra: dict | None = None, state: dict | None = None
) -> Path:
    """Write the model's weights (a whole masked autoencoder, or an encoder alone) and the
    config that rebuilds it; returns the folder.

    ``state``: the full state dict when ``model`` holds only a shard of it (FSDP, DeepSpeed:
    pass ``accelerator.get_state_dict(model)``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config(model, extra=extra)
    state = {k: v.detach().cpu().contiguous() for k, v in (state if state is not None else model.state_dict()).items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def _tokenizer_entry(tokenizer) -> dict:
    return {"class": type(tokenizer).__name__, "config": tokenizer.config()}


def checkpoint_config(model: MaskedAutoencoder | Encoder | MultiModalMAE, *, extra: dict | None = None) -> dict:
    """What ``config.json`` holds for ``model``."""
    if isinstance(model, MultiModalMAE):
        return {
            "modalmae_version": __version__,
            "modalities": {m: _tokenizer_entry(t) for m, t in model.tokenizers.items()},
            "model": model.config.to_dict(),
            "joint": {"specific_depth": model.specific_depth, "loss_weights": model.loss_weights, "norm_pix": model.norm_pix},
            "parts": "multimodal",
            "extra": extra or {},
        }
    tokenizer = model.tokenizer
    modality = next((spec.name for spec in MODALITIES.values() if isinstance(tokenizer, spec.tokenizer)), None)
    return {
        "modalmae_version": __version__,
        "modality": modality,
        "tokenizer": _tokenizer_entry(tokenizer),
        "model": model.config.to_dict(),
        "parts": "encoder" if isinstance(model, Encoder) else "mae",
        "extra": extra or {},
    }


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by ``save_pretrained``."""
    config = Path(path) / CONFIG_NAME
    if not (config.is_file() and (Path(path) / WEIGHTS_NAME).is_file()):
        return False
    try:
        return "modalmae_version" in json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; expected a model folder written by save_pretrained")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e


def _build(config: dict, cls: type[nn.Module]) -> nn.Module:
    """The (untrained) module ``config`` describes."""
    model_config = MAEConfig.from_dict(config["model"])

    def tokenizer(entry: dict):
        return spec_of_tokenizer(entry["class"]).tokenizer(**entry["config"])

    if cls is MultiModalMAE:
        joint = config["joint"]
        tokenizers = {m: tokenizer(entry) for m, entry in config["modalities"].items()}
        return MultiModalMAE(
            tokenizers, model_config, specific_depth=joint["specific_depth"], loss_weights=joint["loss_weights"], norm_pix=joint["norm_pix"],
        )
    return cls(tokenizer(config["tokenizer"]), model_config)


def _load(directory, config: dict, cls: type[nn.Module], map_location: str) -> nn.Module:
    """Build the model ``config`` describes and load its weights. It is first built on the meta
    device (no memory) and checked against the shapes in the weights file's header, so a config
    describing another or a huge model fails before anything is allocated."""
    weights = Path(directory) / WEIGHTS_NAME
    try:
        with torch.device("meta"):
            blueprint = _build(config, cls)
        shapes = {k: tuple(v.shape) for k, v in blueprint.state_dict().items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: {CONFIG_NAME} does not describe a model ({type(e).__name__}: {e})") from e
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    if stored != shapes:
        diff = sorted(set(shapes) ^ set(stored)) or [k for k in shapes if shapes[k] != stored[k]]
        raise CheckpointError(
            f"{directory}: {CONFIG_NAME} and {WEIGHTS_NAME} describe different models (first differences: "
            + ", ".join(f"{k} {shapes.get(k, 'absent')} vs {stored.get(k, 'absent')}" for k in diff[:3]) + ")"
        )
    module = _build(config, cls)
    module.load_state_dict(load_file(str(weights), device=map_location), strict=True)
    return module.eval()


def _convert(path: str | os.PathLike, **convert_options) -> tuple[nn.Module, dict]:
    """Another project's checkpoint as (our model, its config dict)."""
    from modalmae.convert import convert_checkpoint

    try:
        model, extra = convert_checkpoint(path, **convert_options)
    except (FileNotFoundError, KeyError, ValueError) as e:
        message = str(e).strip("'\"")  # KeyError quotes its message
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from e
    return model, checkpoint_config(model, extra=extra)


def load_pretrained(path: str | os.PathLike, *, map_location: str = "cpu", **convert_options) -> tuple[MaskedAutoencoder | MultiModalMAE, dict]:
    """The masked autoencoder (encoder and decoder; a ``MultiModalMAE`` for a joint model) of a
    model folder, or of another project's pretraining checkpoint, converted; returns (model,
    config dict)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: no such model folder or checkpoint file")
    if not is_pretrained_folder(path):
        model, config = _convert(path, **convert_options)
        if not isinstance(model, MaskedAutoencoder):
            raise CheckpointError(f"{path} holds an encoder without a decoder: load it with load_encoder")
        return model.to(map_location).eval(), config
    config = read_config(path)
    if config.get("parts", "mae") == "multimodal":
        return _load(path, config, MultiModalMAE, map_location), config
    if config.get("parts", "mae") != "mae":
        raise CheckpointError(f"{path} holds an encoder without a decoder: load it with load_encoder")
    return _load(path, config, MaskedAutoencoder, map_location), config


def modality_config(config: dict, modality: str) -> dict:
    """The config of one modality's encoder taken out of a joint model's config: shaped as a
    single-modality folder's, so its sample decoders and downstream tools read it as one."""
    return {
        "modalmae_version": config.get("modalmae_version"), "modality": modality, "tokenizer": config["modalities"][modality],
        "model": {**config["model"], "modality_embed": True}, "parts": "encoder", "extra": config.get("extra", {}),
        "joint": {**config["joint"], "modalities": sorted(config["modalities"])},
    }


def load_encoder(
    path: str | os.PathLike, *, map_location: str = "cpu", modality: str | None = None, **convert_options
) -> tuple[Encoder, dict]:
    """The encoder (with its tokenizer) of a model folder, for features or fine-tuning; returns
    (encoder, config dict). Any other checkpoint (a transformers VideoMAE folder, an official
    MAE / VideoMAE / Audio-MAE / Point-MAE ``.pth``) is converted in memory first
    (``modalmae.convert.convert_checkpoint``, which takes ``convert_options``). A joint model
    needs ``modality``: that modality's encoder (``MultiModalMAE.encoder_for``) and config
    (``modality_config``) come back; for any other checkpoint it must name its modality."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: no such model folder or checkpoint file")
    if not is_pretrained_folder(path):
        model, config = _convert(path, **convert_options)
        _check_modality(path, config, modality)
        encoder = model.encoder if isinstance(model, MaskedAutoencoder) else model
        return encoder.to(map_location).eval(), config
    config = read_config(path)
    if config.get("parts", "mae") == "multimodal":
        names = ", ".join(config.get("modalities", {}))
        if modality is None:
            raise CheckpointError(f"{path} is a joint model of {names}: name the modality to take the encoder of")
        if modality not in config.get("modalities", {}):
            raise CheckpointError(f"{path} is a joint model of {names}, without {modality}")
        joint = _load(path, config, MultiModalMAE, map_location)
        return joint.encoder_for(modality).eval(), modality_config(config, modality)
    _check_modality(path, config, modality)
    if config.get("parts", "mae") == "mae":
        return _load(path, config, MaskedAutoencoder, map_location).encoder, config
    return _load(path, config, Encoder, map_location), config


def _check_modality(path, config: dict, modality: str | None) -> None:
    if modality is not None and config.get("modality") not in (None, modality):
        raise CheckpointError(f"{path} is a {config['modality']} model, not {modality}")


def state_digest(module: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
