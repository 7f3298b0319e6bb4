"""The worker process: its loop, lane scheduler and batch sizer, and the HNSW shards of its slot."""
