"""The shard builder behind ``pipelines/build_shards.py``: raw files -> WebDataset tar shards.

    from modalmae.shards import audio, build_shards
    manifest = build_shards(builder=audio.BUILDER, input_dir="raw/speech", output_dir="shards/speech",
                            options=audio.Options(transcode=True))

``build`` is modality-generic and ``writer`` writes the tars; each modality's stage module
(``modalmae.shards.audio``, ``.video``, ``.points``, ``.mri``, ``.image``, imported by name)
defines its ``BUILDER``, and ``modalmae.modalities`` lists them. What the shards hold is
documented in ``modalmae.formats.schema``.
"""

from modalmae.shards.build import (
    NoInputError, OutputInUseError, ShardBuilder, build_shards, default_workers, find_files, prepare_all, read_labels,
)
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import ShardWriter, remove_stale

__all__ = [
    "NoInputError", "OutputInUseError", "Sample", "ShardBuilder", "ShardWriter", "Skip", "build_shards",
    "default_workers", "find_files", "prepare_all", "read_labels", "remove_stale",
]
