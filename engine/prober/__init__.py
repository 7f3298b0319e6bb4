"""The recall prober: a small child of the supervisor (``engine.prober.main``)."""
