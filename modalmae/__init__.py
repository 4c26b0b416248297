"""modalmae: masked-autoencoder pretraining for video, audio, point clouds and MRI."""

__version__ = "0.1.0"
