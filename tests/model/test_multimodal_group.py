"""One forward over several groups: masks that do not fit the group's modalities are refused by
name, decoder masking limits what each head predicts, each modality's output loss is its share of
the stats, and the stats of a modality sum over the groups that hold it."""

import re

import pytest
import torch
from test_multimodal_tokens import audio, av_masks, config, inputs, video

from modalmae.masking import random_masking
from modalmae.model.multimodal import Group, MultiModalMAE


def av_model():
    torch.manual_seed(0)
    return MultiModalMAE({"audio": audio(), "video": video()}, config()).eval()


def test_masks_over_another_number_of_tokens_are_refused_naming_the_modalities():
    masks = random_masking(2, 10, 0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^" + re.escape("masks over 10 tokens for audio + video = 16 tokens") + "$"):
        av_model()(Group(inputs(2, "video", "audio"), masks))


def test_decoder_masking_predicts_only_the_chosen_masked_tokens():
    """VideoMAE V2: with ``ids_predict`` (2 of each sample's 12 masked tokens: one audio, one
    video) the heads predict and count exactly those."""
    masks = av_masks()
    chosen = torch.stack([torch.cat([row[row < 8][:1], row[row >= 8][:1]]) for row in masks.ids_masked])
    out = av_model()(Group(inputs(3, "audio", "video"), masks.with_decoder_masking(chosen)))
    for m, local in (("audio", chosen[:, :1]), ("video", chosen[:, 1:] - 8)):
        assert out.outputs[0][m].pred_tokens.shape[:2] == (3, 1)
        assert torch.equal(out.outputs[0][m].ids_predict, local)
        assert out.stats[m][1].item() == 3


def test_each_modalitys_loss_is_its_stats_mean_and_stats_add_up_over_groups():
    """A modality's output loss is its counted tokens' mean loss (stats: sum, count); with audio in
    two groups, its stats are the two groups' stats added, and the loss averages the groups by
    their samples."""
    model = av_model()
    both = Group(inputs(3, "audio", "video"), av_masks())
    alone = Group(inputs(2, "audio", seed=5), random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(2)))
    one, two, joint = model(both), model(alone), model(both, alone)
    for out in (one, two):
        for m, (total, count) in out.stats.items():
            torch.testing.assert_close(out.outputs[0][m].loss, total / count)
    torch.testing.assert_close(joint.stats["audio"], one.stats["audio"] + two.stats["audio"])
    torch.testing.assert_close(joint.stats["video"], one.stats["video"])
    torch.testing.assert_close(joint.loss, (3 * one.loss + 2 * two.loss) / 5)
