"""Streaming shards into batches: finding shards and planning each rank's part (``shards``),
reading them (``remote``), the streaming dataset (``stream``) and one sample decoder per
modality (``audio``, ``video``, ``points``, ``mri``, ``image``). What shards and batches hold is
documented in ``modalmae.formats.schema``."""
