"""The shard builder behind ``pipelines/build_shards.py``: raw files -> WebDataset tar shards.

    from modalmae.shards import audio, build_shards
    manifest = build_shards(builder=audio.BUILDER, input_dir="raw/speech", output_dir="shards/speech",
                            options=audio.Options(transcode=True))

``build`` is modality-generic: it plans the shards (``plan``), runs one task per shard on an
engine (``engines``: local processes or Ray) that writes through an ``output`` (a folder or an
fsspec URL), and ``writer`` writes the tars; each modality's stage module
(``modalmae.shards.audio``, ``.video``, ``.points``, ``.mri``, ``.image``, imported by name)
defines its ``BUILDER``, and ``modalmae.modalities`` lists them. What the shards hold is
documented in ``modalmae.formats.schema``.
"""

from modalmae.shards.build import (
    ENGINES, NoInputError, OutputInUseError, ShardBuilder, build_shards, default_workers, find_files, read_labels,
)
from modalmae.shards.engines import BuildError, WorkersDidNotStart
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import ShardWriter, remove_stale

__all__ = [
    "ENGINES", "BuildError", "NoInputError", "OutputInUseError", "Sample", "ShardBuilder", "ShardWriter", "Skip",
    "WorkersDidNotStart", "build_shards", "default_workers", "find_files", "read_labels", "remove_stale",
]
