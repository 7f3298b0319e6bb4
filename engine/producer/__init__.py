"""The same-host producer (``engine.connect``): validation, routing, enqueue, recall merge."""
