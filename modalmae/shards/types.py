"""What a modality's ``prepare`` returns for one source file, and the options every stage shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from modalmae.flags import arg

# How deeply ``prepare`` checks a file (``--validate``). Every stage's ``Options`` declares the
# field through ``validate_option()``, so the flag the CLI lists once is the same in each.
VALIDATE_DEPTHS = ("full", "header")
VALIDATE_HELP = (
    "how deeply each file is checked: 'full' decodes all of its content (every frame, sample, voxel or pixel) and "
    "skips files that are corrupt anywhere; 'header' reads only the container or header (streams, shape, rate, "
    "dtype, declared sizes and the limits on them) and stores the same bytes, much faster, for corpora already "
    "known to be good: content broken past the header is then found only by the loader. Re-encoding "
    "(--short-side, --keyframe-interval, --transcode, containers' audio stored as FLAC, point clouds, DICOM) "
    "decodes in full either way"
)


def validate_option():
    """The ``validate`` field of a stage's ``Options``: ``"full"`` (default) or ``"header"``."""
    return arg("full", VALIDATE_HELP, choices=VALIDATE_DEPTHS)


@dataclass
class Sample:
    files: dict[str, bytes]  # extension -> bytes (the sample's json is added by the builder)
    meta: dict = field(default_factory=dict)  # goes into <key>.json
    warning: str | None = None  # kept, but worth a line in the manifest (say, a partial video)


@dataclass
class Skip:
    path: str  # relative to the input folder
    reason: str
