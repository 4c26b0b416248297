"""Tokenizers: one modality in, tokens out. Each is usable on its own; ``base.py`` states the
contract (``Tokenizer``) they all keep."""

from modalmae.tokenizers.base import MaskedTokens, Tokenizer, TokenizerBase, Tokens
from modalmae.tokenizers.fbank import AudioFrontend, kaldi_fbank, resample
from modalmae.tokenizers.image import ImagePatches
from modalmae.tokenizers.points import PointGroups, group_points
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes
from modalmae.tokenizers.volume import VolumePatches

__all__ = ["Tokenizer", "TokenizerBase", "Tokens", "MaskedTokens", "SpectrogramPatches", "VideoTubes", "PointGroups", "group_points", "VolumePatches", "ImagePatches", "AudioFrontend", "kaldi_fbank", "resample"]
