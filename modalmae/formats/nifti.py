"""NIfTI volumes from bytes, for the MRI builder (checks) and the MRI loader (decoding)."""

from __future__ import annotations

import gzip

NIFTI1_HEADER_BYTES = 348


def load_nifti(data: bytes):
    """A nibabel image from the bytes of a .nii or .nii.gz (told apart by the gzip magic)."""
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < NIFTI1_HEADER_BYTES:
        raise ValueError(f"{len(data)} bytes: too short for a NIfTI header")
    return nib.Nifti1Image.from_bytes(data)
