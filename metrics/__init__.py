"""Metrics: catalog, shared-memory metric array, writer API, exporter (DESIGN §9).

Data flow::

    worker / supervisor / gateway / producer          exporter process
    ----------------------------------------          -----------------------------
    MetricWriter(array, row)  --numpy adds-->  MetricArray  --snapshot-->  ArrayCollector
      (single writer per row, no lock)         (shm, float64        (sum/max rows, cumulative
                                                rows x cells)         histograms, names of spaces)
                                                                            |
                                                   serve(addr, collector, health) -> /metrics,
                                                   /health/live, /health/ready, /api/v1/system/health

Modules, one role each:

* ``catalog``   — one declaration per metric and the label domains; ``render_markdown``.
* ``cells``     — where each (metric, labels) lives in a row, from catalog + sizing.
* ``array``     — ``MetricArray``: the segment, its layout and row assignment.
* ``writer``    — ``MetricWriter``: batch-oriented recording into one row.
* ``lease``     — ``ProducerRowLease``: a producer process's row (kernel-released lock).
* ``collector`` — ``ArrayCollector``: prometheus_client custom collector.
* ``exporter``  — the HTTP server: routes, content negotiation, health.
* ``httpserve``, ``httpreader``, ``httplanes`` — its bounded connection handling:
  one reader thread, lanes of fixed thread pools with bounded queues, deadlines.
* ``ratelog``   — rate-limited log lines for client errors.

This package is mechanism plus catalog: it knows nothing of the engine. The
engine passes in what only it knows (space names, live queue gauges, health).
"""
