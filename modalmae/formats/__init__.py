"""What the shard builder writes and the loaders read, below both of them.

- ``schema``: the sample and batch keys (documented there), shard and manifest names, sample
  keys, the entry names each kind of media is stored under;
- ``nifti``: reading NIfTI bytes (MRI), shared by the builder's checks and the loader.

Nothing here imports torch or any other part of modalmae, so the builder's worker processes
stay light.
"""
