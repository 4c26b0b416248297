"""The modality registry: everything an entry point must know about a modality, in one place.

One ``ModalitySpec`` per modality, written out below (nothing registers itself on import). The
shard builder, the recipes' shared shell, checkpoints, feature extraction, probes, fine-tuning
and pictures all read these specs; no other file branches on a modality or tokenizer name.

Adding a modality is one spec here plus its stage files, each usable on its own:

- ``modalmae/shards/<name>.py``: raw files -> samples (``BUILDER``: suffixes tried, ``Options``
  whose fields become ``build_shards.py`` flags, ``prepare``);
- ``modalmae/data/<name>.py``: a sample decoder (bytes -> fixed-size tensors) with a
  ``from_checkpoint(config, *, train)`` classmethod rebuilding it from a model folder's config;
- ``modalmae/tokenizers/<name>.py``: a ``Tokenizer`` (``modalmae.tokenizers.base``);
- a picture in ``modalmae/viz.py`` and a recipe ``recipes/<name>_mae.py`` (its config and model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modalmae import viz
from modalmae.data.audio import AudioDecoder
from modalmae.data.image import ImageDecoder
from modalmae.data.mri import MRIDecoder
from modalmae.data.points import PointDecoder
from modalmae.data.video import VideoDecoder, normalize_clip
from modalmae.masking import Masks, completion_masks, dirichlet_masking, random_masking, tube_masking
from modalmae.model import MAEOutput
from modalmae.model.multisequence import sequence_losses
from modalmae.shards import audio as audio_shards
from modalmae.shards import image as image_shards
from modalmae.shards import mri as mri_shards
from modalmae.shards import points as points_shards
from modalmae.shards import video as video_shards
from modalmae.shards.build import ShardBuilder
from modalmae.tokenizers.base import Tokenizer
from modalmae.tokenizers.image import ImagePatches
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes
from modalmae.tokenizers.volume import VolumePatches

Masking = Callable[[Tokenizer, Any, float, torch.Generator], Masks]
Picture = Callable[..., Path]  # (model, x, masks, path, *, title) -> path
LossReduction = Callable[[MAEOutput, Tokenizer], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    builder: ShardBuilder  # raw files -> shard samples
    tokenizer: type[Tokenizer]  # rebuilt from a checkpoint's tokenizer config (its keyword arguments)
    # (model folder config, *, train, **decoder_options) -> a ShardStream sample decoder
    decoder: Callable[..., Any]
    input_keys: tuple[str, ...]  # the batch keys the model's input is made of (one: a tensor, several: a dict)
    mask_ratio: float  # the published method's masking ratio
    masking: Masking  # the published method's masking: (tokenizer, x, ratio, generator) -> Masks
    picture: Picture  # input, masked input and reconstruction of one sample
    recipe: str  # its pretraining recipe in recipes/ (joint runs build each modality's part with it)
    # The training loss when it is not the mean over masked tokens (+ figures for metrics.jsonl)
    loss: LossReduction | None = None
    # Masks that reconstruct named parts of a sample wholly from its other parts (MRI: sequences)
    completion: Callable[[Tokenizer, Any, list[str]], Masks] | None = None
    decoder_options: tuple[str, ...] = field(default=())  # settings a command line may override in ``decoder``
    # Other kinds of shards whose samples hold this modality's entry too (audio: the FLAC that
    # build_shards.py --modality video --extract-audio adds), which its decoder reads as well
    reads: tuple[str, ...] = field(default=())
    # Inputs that may travel from the loader in 8 bits, and what makes them model-ready on the
    # device (video: clips normalized there, ``VideoDecoder(eight_bit=True)``)
    on_device: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = field(default=())

    @property
    def shard_kinds(self) -> tuple[str, ...]:
        """The ``build_shards.py --modality`` kinds this modality's decoder reads."""
        return (self.name, *self.reads)


def batch_size(x: Tensor | dict) -> int:
    return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]


def _random(tokenizer: Tokenizer, x, ratio: float, generator: torch.Generator) -> Masks:
    return random_masking(batch_size(x), tokenizer.num_tokens, ratio, generator=generator)


def _tubes(tokenizer: VideoTubes, x, ratio: float, generator: torch.Generator) -> Masks:
    return tube_masking(batch_size(x), tokenizer.grid, ratio, generator=generator)


def _sequences(tokenizer: VolumePatches, x: dict, ratio: float, generator: torch.Generator) -> Masks:
    """BM-MAE: (1 - ratio) x one sequence's tokens visible, split among the present sequences."""
    visible = max(1, round((1 - ratio) * tokenizer.tokens_per_sequence))
    return dirichlet_masking(x["present"].cpu(), tokenizer.tokens_per_sequence, visible, generator=generator)


def _complete(tokenizer: VolumePatches, x: dict, names: list[str]) -> Masks:
    """BM-MAE's missing-sequence completion: every token of ``names`` predicted from all of the others'."""
    unknown = sorted(set(names) - set(tokenizer.sequences))
    if unknown:
        raise ValueError(f"{' '.join(unknown)}: the model's sequences are {' '.join(tokenizer.sequences)}")
    targets = torch.tensor([[s in names for s in tokenizer.sequences]]).expand_as(x["present"]).to(x["present"].device)
    if not (x["present"] & ~targets).any():
        raise ValueError("no other sequence to reconstruct them from")
    return completion_masks(x["present"] & ~targets, targets, tokenizer.tokens_per_sequence)


MODALITIES: dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec(  # Audio-MAE: log-mel fbank patches, 80% random masking
            name="audio",
            recipe="audio_mae.py",
            builder=audio_shards.BUILDER, tokenizer=SpectrogramPatches, decoder=AudioDecoder.from_checkpoint,
            input_keys=("fbank",), mask_ratio=0.8, masking=_random, picture=viz.draw_spectrogram, reads=("video",),
        ),
        ModalitySpec(  # VideoMAE: spacetime tubes, 90% tube masking
            name="video",
            recipe="video_mae.py",
            builder=video_shards.BUILDER, tokenizer=VideoTubes, decoder=VideoDecoder.from_checkpoint,
            input_keys=("video",), mask_ratio=0.9, masking=_tubes, picture=viz.draw_video, decoder_options=("sampling_rate",),
            on_device=(("video", normalize_clip),),
        ),
        ModalitySpec(  # Point-MAE: point groups, 60% random masking, Chamfer loss
            name="points",
            recipe="point_mae.py",
            builder=points_shards.BUILDER, tokenizer=PointGroups, decoder=PointDecoder.from_checkpoint,
            input_keys=("points",), mask_ratio=0.6, masking=_random, picture=viz.draw_points,
        ),
        ModalitySpec(  # BM-MAE: 3-D patches of several MRI sequences, Dirichlet masking across them
            name="mri",
            recipe="mri_mae.py",
            builder=mri_shards.BUILDER, tokenizer=VolumePatches, decoder=MRIDecoder.from_checkpoint,
            input_keys=("volume", "present"), mask_ratio=0.75, masking=_sequences, picture=viz.draw_volume,
            loss=sequence_losses, completion=_complete,
        ),
        ModalitySpec(  # MAE: 16x16 image patches, 75% random masking
            name="image",
            recipe="image_mae.py",
            builder=image_shards.BUILDER, tokenizer=ImagePatches, decoder=ImageDecoder.from_checkpoint,
            input_keys=("image",), mask_ratio=0.75, masking=_random, picture=viz.draw_image,
        ),
    )
}


def spec_of_tokenizer(name: str) -> ModalitySpec:
    """The spec whose tokenizer class is called ``name`` (what a checkpoint records)."""
    for spec in MODALITIES.values():
        if spec.tokenizer.__name__ == name:
            return spec
    known = ", ".join(spec.tokenizer.__name__ for spec in MODALITIES.values())
    raise ValueError(f"unknown tokenizer {name!r}; known: {known}")


def spec_of(config: dict) -> ModalitySpec:
    """The spec of a model folder's config.json."""
    return spec_of_tokenizer(config["tokenizer"]["class"])


def model_input(spec: ModalitySpec, batch: dict, device: torch.device | str, *, rows: slice = slice(None)):
    """The model's input from a batch: ``batch[key]``, or {key: batch[key]} for several keys,
    on ``device`` (``rows``: a part of the batch); floats that travelled in 16 bits
    (``modalmae.data.stream.CastFloats``) become fp32 there, and 8-bit inputs go through the
    spec's ``on_device`` function (video clips are normalized)."""
    finish = dict(spec.on_device)

    def moved(key: str) -> Tensor:
        value = batch[key][rows].to(device, non_blocking=True)
        if value.dtype == torch.uint8 and key in finish:
            return finish[key](value)
        return value.float() if value.is_floating_point() and value.element_size() < 4 else value

    if len(spec.input_keys) == 1:
        return moved(spec.input_keys[0])
    return {key: moved(key) for key in spec.input_keys}


def decoder_for(config: dict, *, train: bool, **options) -> tuple[ModalitySpec, Any]:
    """(spec, sample decoder) for a model folder's config; ``options`` the command-line
    overrides that were given (None values are ignored)."""
    spec = spec_of(config)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(spec.decoder_options))
    if unknown:
        flags = " ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{flags}: does not apply to a {spec.name} model")
    return spec, spec.decoder(config, train=train, **given)
