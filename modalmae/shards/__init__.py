"""The shard builder behind pipelines/build_shards.py."""
