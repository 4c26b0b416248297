"""Tokenizers: one modality in, tokens out. Each is usable on its own (see ``base.py``)."""

from modalmae.tokenizers.base import Tokens
from modalmae.tokenizers.fbank import AudioFrontend, kaldi_fbank, resample
from modalmae.tokenizers.spectrogram import SpectrogramPatches

__all__ = ["Tokens", "SpectrogramPatches", "AudioFrontend", "kaldi_fbank", "resample"]
