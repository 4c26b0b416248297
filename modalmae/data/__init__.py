"""Streaming shards into batches; ``schema.py`` documents what shards and batches hold."""

from modalmae.data.shards import ShardSet, resolve_shards
from modalmae.data.stream import ShardStream, collate, make_loader

__all__ = ["ShardSet", "resolve_shards", "ShardStream", "collate", "make_loader"]
