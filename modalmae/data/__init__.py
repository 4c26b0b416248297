"""Streaming shards into batches; ``schema.py`` documents what shards and batches hold.

Kept import-light on purpose: the shard builder's worker processes import ``schema`` and must
not pay for torch. Import ``modalmae.data.stream`` / ``.shards`` / ``.audio`` / ``.video``.
"""
