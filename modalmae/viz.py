"""Pictures of what the model reconstructs: input, masked input, reconstruction.

Modality-agnostic up to the last step: the panels are computed in patch space with the
tokenizer's ``patchify`` / ``unpatchify``, and a per-modality function draws them. As in MAE's
demo, the reconstruction shows the visible patches as they were and the predicted patches,
de-normalized with each target patch's own mean and std when the loss used ``norm_pix_loss``.

The ``draw_*`` functions are what ``modalmae.modalities`` names as each modality's picture:
``draw(model, x, masks, path, *, title) -> path`` for one sample ``x`` (a batch of one) and its
masks. ``draw_joint`` draws a joint model's sample with each of its modalities' pictures (the
model seen through ``ModalityView``) stacked into one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from modalmae.masking import Masks, concat_masks
from modalmae.model import MAEOutput, MaskedAutoencoder
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.model.multisequence import complete_sequences


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported lazily."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path, title: str) -> Path:
    path = Path(path)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def reconstruction_panels(model: MaskedAutoencoder, x: Tensor, masks: Masks) -> dict[str, Tensor]:
    """x: a batch of inputs -> {"input", "masked", "reconstruction"} in input space, on CPU."""
    was_training = model.training
    model.eval()
    out = model(x, masks)
    model.train(was_training)
    patches = model.tokenizer.patchify(x)  # [B, L, P]
    pred = out.pred
    if model.config.norm_pix_loss:
        mean, std = model.tokenizer.target_stats(patches)
        pred = pred * std + mean
    hidden = masks.mask[..., None].bool()  # [B, L, 1]
    fill = patches.min()  # masked patches are drawn at the darkest value
    panels = {
        "input": patches,
        "masked": torch.where(hidden, fill, patches),
        "reconstruction": torch.where(hidden, pred.to(patches.dtype), patches),
    }
    return {k: model.tokenizer.unpatchify(v).float().cpu() for k, v in panels.items()}


def save_spectrogram_figure(panels: dict[str, Tensor], path: str | Path, *, title: str = "", index: int = 0) -> Path:
    """Three stacked spectrograms [T, F] (time on x, mel bins on y) of sample ``index``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.4 * len(panels)), sharex=True)
    vmin, vmax = panels["input"][index].min().item(), panels["input"][index].max().item()
    for ax, (name, spec) in zip(axes, panels.items()):
        ax.imshow(spec[index].T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_ylabel(f"{name}\nmel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    return _save(plt, fig, path, title)


def save_video_figure(panels: dict[str, Tensor], path: str | Path, *, title: str = "", index: int = 0, max_frames: int = 8) -> Path:
    """A grid: one row per panel, one column per shown frame, of pixel-space clips [C, T, H, W]."""
    plt = _pyplot()
    frames = panels["input"].shape[2]
    shown = sorted({round(i * (frames - 1) / max(1, min(max_frames, frames) - 1)) for i in range(min(max_frames, frames))})
    fig, axes = plt.subplots(len(panels), len(shown), figsize=(1.8 * len(shown), 1.9 * len(panels)), squeeze=False)
    for row, (name, clip) in enumerate(panels.items()):
        for col, t in enumerate(shown):
            ax = axes[row][col]
            ax.imshow(clip[index, :, t].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    return _save(plt, fig, path, title)


@torch.no_grad()
def point_panels(model: MaskedAutoencoder, x: Tensor, masks: Masks, *, index: int = 0) -> dict[str, Tensor]:
    """Packed point groups [B, G, 1 + k, 3] -> {"input", "visible", "reconstruction"} [n, 3] clouds
    of sample ``index``: every grouped point, the visible groups, and the visible groups plus
    the predicted masked ones (placed at their centres)."""
    was_training = model.training
    model.eval()
    out = model(x, masks)
    model.train(was_training)
    tok = model.tokenizer
    centres = x[:, :, 0]
    truth = tok.unpatchify(tok.patchify(x), coords=centres)[index]  # [G, k, 3]
    guess = tok.unpatchify(out.pred, coords=centres)[index]
    hidden = masks.mask[index].bool()
    return {
        "input": truth.reshape(-1, 3).cpu(),
        "visible": truth[~hidden].reshape(-1, 3).cpu(),
        "reconstruction": torch.cat([truth[~hidden], guess[hidden]]).reshape(-1, 3).cpu(),
    }


def save_points_figure(panels: dict[str, Tensor], path: str | Path, *, title: str = "") -> Path:
    """One 3-D scatter per panel, same axes limits."""
    plt = _pyplot()
    fig = plt.figure(figsize=(4.2 * len(panels), 4.4))
    lo, hi = panels["input"].min().item(), panels["input"].max().item()
    for i, (name, pts) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        p = pts.numpy()
        ax.scatter(p[:, 0], p[:, 2], p[:, 1], s=1.5, c=p[:, 1], cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xlim(lo, hi), ax.set_ylim(lo, hi), ax.set_zlim(lo, hi)
        ax.set_title(name)
        ax.set_axis_off()
    return _save(plt, fig, path, title)


def save_volume_figure(
    panels: dict[str, Tensor], path: str | Path, *, sequences: list[str], present: Tensor | None = None, title: str = "", index: int = 0,
) -> Path:
    """One row per MRI sequence: axial, coronal and sagittal centre slices (RAS volumes
    [S, X, Y, Z]) of each panel (input, masked, reconstruction) of sample ``index``."""
    plt = _pyplot()
    planes = {
        "axial": lambda v: v[:, :, v.shape[2] // 2].T,  # x right, y (anterior) up
        "coronal": lambda v: v[:, v.shape[1] // 2, :].T,  # x right, z (superior) up
        "sagittal": lambda v: v[v.shape[0] // 2, :, :].T,  # y right, z up
    }
    cols = [(plane, name) for plane in planes for name in panels]
    fig, axes = plt.subplots(len(sequences), len(cols), figsize=(1.6 * len(cols), 1.7 * len(sequences)), squeeze=False)
    for row, sequence in enumerate(sequences):
        reference = panels["input"][index, row]
        vmin, vmax = reference.min().item(), reference.max().item()
        if vmin == vmax:  # an absent sequence: scale by what was predicted
            vmin, vmax = panels["reconstruction"][index, row].min().item(), panels["reconstruction"][index, row].max().item() + 1e-6
        for col, (plane, name) in enumerate(cols):
            ax = axes[row, col]
            ax.imshow(planes[plane](panels[name][index, row]).numpy(), origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{plane}\n{name}", fontsize=8)
            if col == 0:
                absent = present is not None and not bool(present[index, row])
                ax.set_ylabel(sequence + (" (absent)" if absent else ""), fontsize=8)
    return _save(plt, fig, path, title)


def save_image_figure(panels: dict[str, Tensor], path: str | Path, *, title: str = "", index: int = 0) -> Path:
    """The panels side by side: pixel-space images [C, H, W] of sample ``index``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels.items()):
        ax.imshow(images[index].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(name)
        ax.set_axis_off()
    return _save(plt, fig, path, title)


# ----------------------------------------------------------------------------- one call per modality


def draw_spectrogram(model: MaskedAutoencoder, x: Tensor, masks: Masks, path: str | Path, *, title: str = "") -> Path:
    return save_spectrogram_figure(reconstruction_panels(model, x, masks), path, title=title)


def draw_video(model: MaskedAutoencoder, x: Tensor, masks: Masks, path: str | Path, *, title: str = "") -> Path:
    return save_video_figure(reconstruction_panels(model, x, masks), path, title=title)


def draw_points(model: MaskedAutoencoder, x: Tensor, masks: Masks, path: str | Path, *, title: str = "") -> Path:
    return save_points_figure(point_panels(model, x, masks), path, title=title)


def draw_volume(model: MaskedAutoencoder, x: dict, masks: Masks, path: str | Path, *, title: str = "") -> Path:
    """MRI: the sequences the subject has as masked and reconstructed; those it lacks as the
    model completes them from the others."""
    panels = reconstruction_panels(model, x, masks)
    present = x["present"].cpu()
    absent = ~present
    if absent.any() and masks.ids_predict is None:  # a completion's masks already target the absent ones
        was_training = model.training
        model.eval()
        panels["reconstruction"][absent] = complete_sequences(model, x["volume"], x["present"], ~x["present"]).cpu()[absent]
        model.train(was_training)
    return save_volume_figure(panels, path, sequences=model.tokenizer.sequences, present=present, title=title)


def draw_image(model: MaskedAutoencoder, x: Tensor, masks: Masks, path: str | Path, *, title: str = "") -> Path:
    panels = reconstruction_panels(model, x, masks)  # in the normalized space the model sees
    return save_image_figure({k: model.tokenizer.pixels(v) for k, v in panels.items()}, path, title=title)


# ----------------------------------------------------------------------------- joint models


class ModalityView:
    """One modality of a joint model's forward on a ``Group``, shaped like a single-modality
    ``MaskedAutoencoder`` for the ``draw_*`` functions: called with that modality's input and
    its part of the group's masks it gives what the joint forward predicted (with the other
    modalities in view); called with other masks (an MRI completion), or made without them, it
    runs the modality alone."""

    def __init__(self, model: MultiModalMAE, modality: str, masks: Masks | None = None, out: MAEOutput | None = None) -> None:
        self.joint, self.modality, self.masks, self.out = model, modality, masks, out
        self.tokenizer = model.tokenizers[modality]
        self.config = replace(model.config, norm_pix_loss=model.norm_pix[modality])
        self.training = False

    def eval(self) -> "ModalityView":
        return self

    def train(self, mode: bool = True) -> "ModalityView":
        return self

    def __call__(self, x, masks: Masks) -> MAEOutput:
        if self.masks is not None and masks is self.masks:
            return self.out
        return self.joint(Group({self.modality: x}, concat_masks([masks]))).outputs[0][self.modality]


def _modality_masks(masks: Masks, start: int, length: int) -> Masks:
    """The part of joint masks (of one sample) over tokens [start, start + length)."""
    def part(ids: Tensor) -> Tensor:
        inside = (ids >= start) & (ids < start + length)
        return (ids[inside] - start)[None]

    ids_predict = None if masks.ids_predict is None else part(masks.ids_predict)
    return Masks(part(masks.ids_keep), part(masks.ids_masked), masks.mask[:, start : start + length], ids_predict)


@torch.no_grad()
def draw_joint(model: MultiModalMAE, group: Group, path: str | Path, *, pictures: dict, title: str = "") -> Path:
    """The pictures (``{modality: draw function}``) of each modality of one sample (a group of
    batch 1) as the joint model reconstructs it, one above the other in a single PNG;
    ``<path stem>_<modality>.png`` keeps each on its own."""
    from PIL import Image

    was_training = model.training
    model.eval()
    out = model(group).outputs[0]
    model.train(was_training)
    path, start, files = Path(path), 0, []
    for m in model.order(group.inputs):
        length = model.tokenizers[m].num_tokens
        masks = _modality_masks(group.masks, start, length)
        view = ModalityView(model, m, masks, out[m])
        absent = m in group.present and not bool(group.present[m][0])
        name = f"{m} (absent: not in the loss)" if absent else m
        files.append(pictures[m](view, group.inputs[m], masks, path.with_name(f"{path.stem}_{m}.png"), title=f"{name}: {title}" if title else name))
        start += length
    images = [Image.open(f).convert("RGB") for f in files]
    sheet, top = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white"), 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
