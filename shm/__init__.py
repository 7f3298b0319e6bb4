"""Shared-memory mechanisms, without policy: segments, locks, rings, layouts.

Nothing here knows about HNSW, priorities or memory spaces; `engine/` decides
what the bytes mean.
"""
