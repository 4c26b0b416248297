"""modalmae: masked-autoencoder pretraining for video, audio, point clouds, MRI and images.

The modalities and everything the entry points know about them: ``modalmae.modalities``.
"""

__version__ = "0.1.0"
