"""Embed a whole corpus into the Redis cache on a Ray cluster: `python -m embedder.bulk`.

Nothing here imports Ray at import time; the job does, when it runs.
"""
