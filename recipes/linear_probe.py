"""Linear probe: how linearly separable a frozen encoder's features are (MAE's protocol).

Every sample of the shards is embedded once by the frozen encoder (evaluation preprocessing,
pooled over tokens); a held-out share of the keys (by hash, ``--val-fraction``) is kept apart.
On the training features a linear classifier is trained after MAE's parameter-free
normalization (features standardized with the training statistics, like MAE's BatchNorm without
affine parameters); its accuracy on the held-out features is the result. Labels are the
``label`` of each sample's json (``build_shards.py --labels`` or ``--label-from-parent``).

    python recipes/linear_probe.py --checkpoint runs/demo-audio/model --shards shards/demo-audio --output runs/probe

The checkpoint is a model folder (a run's model/, convert_checkpoint.py's output) or a published
checkpoint convert_checkpoint.py reads. Writes to --output: config.json, metrics.jsonl (training
lines every --log-every epochs, then {"split": "val", "accuracy", "chance", ...}), probe.safetensors
(weight, bias, mean, std) and classes.json. One process: the features are computed once, the probe
itself takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from modalmae.data.stream import ShardStream, make_loader
from modalmae.train.config import arg, parse_config
from modalmae.train.downstream import extract_features, open_checkpoint, split_of
from modalmae.train.recipe import open_shards, output_folder


@dataclass
class ProbeConfig:
    checkpoint: str = arg(None, "model folder (a run's model/ or convert_checkpoint.py's output) or a published checkpoint", required=True)
    shards: list[str] = arg(None, "labelled shards: folders from build_shards.py, manifests or brace patterns", required=True)
    output: str = arg("runs/linear_probe", "folder for config.json, metrics.jsonl, probe.safetensors, classes.json")
    val_fraction: float = arg(0.2, "share of the samples held out for the accuracy (chosen by key hash)")
    pool: str = arg("mean", "pooling of the encoder's tokens", choices=("mean", "cls"))
    epochs: int = arg(100, "passes over the training features")
    lr: float = arg(1e-2, "AdamW learning rate of the linear classifier (cosine decay to 0)")
    weight_decay: float = arg(0.0, "AdamW weight decay of the classifier (MAE's probe: 0)")
    probe_batch_size: int = arg(256, "features per classifier step")
    batch_size: int = arg(16, "samples per encoder forward pass")
    workers: int = arg(2, "DataLoader worker processes for the feature extraction")
    sampling_rate: int = arg(None, "video: stride between the clip's frames (default: the checkpoint's)")
    modality: str = arg(None, "the modality to train on, for a joint model (recipes/av_mae.py, multi_mae.py): audio, video, ...")
    device: str = arg("cuda" if torch.cuda.is_available() else "cpu", "where the encoder runs")
    seed: int = arg(0, "seed of the split and the classifier")
    log_every: int = arg(10, "write a training line to metrics.jsonl every N epochs")
    progress: bool = arg(True, "show a progress bar")


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ProbeConfig, log) -> torch.nn.Linear:
    """A linear classifier on standardized features x [N, D] with labels y [N]."""
    torch.manual_seed(cfg.seed)
    probe = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.trunc_normal_(probe.weight, std=0.01)  # MAE's probe init
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(x) // cfg.probe_batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        total, correct = 0.0, 0
        for ids in torch.randperm(len(x), generator=generator).split(cfg.probe_batch_size):
            logits = probe(x[ids])
            loss = torch.nn.functional.cross_entropy(logits, y[ids])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(ids)
            correct += (logits.argmax(1) == y[ids]).sum().item()
        if epoch % cfg.log_every == 0 or epoch == cfg.epochs:
            log({"epoch": epoch, "loss": total / len(x), "train_accuracy": correct / len(x), "lr": schedule.get_last_lr()[0]})
    return probe


def main(argv: list[str] | None = None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    cfg = parse_config(ProbeConfig, argv, description=head, epilog=rest)
    output = output_folder(cfg.output)
    (output / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    model = open_checkpoint(cfg.checkpoint, map_location=cfg.device, modality=cfg.modality, sampling_rate=cfg.sampling_rate)
    sources = open_shards(cfg.shards, model.spec.shard_kinds)
    stream = ShardStream(sources, model.eval_decoder, epochs=1, shuffle_buffer=1, shuffle_shards=False)
    loader = make_loader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers)
    keys, feats, labels, skipped = extract_features(
        model.encoder, loader, spec=model.spec, pool=cfg.pool, device=cfg.device,
        total=sum(s.num_samples or 0 for s in sources) or None, progress=cfg.progress,
    )
    splits = [split_of(k, val_fraction=cfg.val_fraction, seed=cfg.seed) for k in keys]
    train = [i for i, (s, label) in enumerate(zip(splits, labels)) if s == "train" and label]
    val = [i for i, (s, label) in enumerate(zip(splits, labels)) if s == "val" and label]
    classes = sorted({labels[i] for i in train})
    if len(classes) < 2 or not val:
        print(
            f"error: a probe needs labelled samples of at least 2 classes to train on and some held out; got {len(train)} "
            f"training samples of {len(classes)} classes and {len(val)} held out (labels come from each sample's json)",
            file=sys.stderr,
        )
        return 1
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(feats)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    y = torch.tensor([index.get(label, -1) for label in labels])

    with open(output / "metrics.jsonl", "w") as metrics:
        def log(record: dict) -> None:
            metrics.write(json.dumps(record) + "\n")

        probe = train_probe(x[train], y[train], len(classes), cfg, log)
        with torch.no_grad():
            pred = probe(x[val]).argmax(1)
        known = y[val] >= 0  # held-out samples of classes the probe never saw count as errors
        accuracy = ((pred == y[val]) & known).float().mean().item()
        majority = Counter(labels[i] for i in val).most_common(1)[0][1] / len(val)
        result = {
            "split": "val", "accuracy": accuracy, "chance": majority, "num_train": len(train), "num_val": len(val),
            "num_classes": len(classes), "skipped": skipped,
        }
        log(result)
    save_file(
        {"weight": probe.weight.detach().contiguous(), "bias": probe.bias.detach().contiguous(), "mean": mean.contiguous(), "std": std.contiguous()},
        str(output / "probe.safetensors"),
    )
    (output / "classes.json").write_text(json.dumps(classes) + "\n")
    print(f"\nheld-out accuracy {accuracy:.3f} on {len(val)} samples ({len(classes)} classes; majority class {majority:.3f})")
    print(f"metrics:     {output / 'metrics.jsonl'}")
    print(f"probe:       {output / 'probe.safetensors'} (+ classes.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
