"""Converters from other projects' checkpoints (key and shape mapping; nothing is downloaded)."""
