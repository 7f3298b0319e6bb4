"""``python -m engine`` is the same as ``engram-stream``."""

from engine.cli.main import entry

if __name__ == "__main__":
    entry()
