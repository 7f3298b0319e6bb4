"""``engram-stream`` / ``python -m engine``: the command line (run, status, load, recall, stop, ...)."""
