"""What a modality's ``prepare`` returns for one source file."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    files: dict[str, bytes]  # extension -> bytes (the sample's json is added by the builder)
    meta: dict = field(default_factory=dict)  # goes into <key>.json
    warning: str | None = None  # kept, but worth a line in the manifest (say, a partial video)


@dataclass
class Skip:
    path: str  # relative to the input folder
    reason: str
