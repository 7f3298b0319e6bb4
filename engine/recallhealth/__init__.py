"""Self-healing recall: the probe's known answers and hysteresis, the per-slot
circuit breaker of the recall fan-out, and the auto-tuner's step function.

Pure policy on injected clocks (STYLE §7); the processes that run it are
``engine.prober`` (probes), every recaller (breakers, ``board``) and the
supervisor (``engine.supervisor.autotune``).
"""
