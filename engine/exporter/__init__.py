"""The exporter process: serves the metric array and health over HTTP, reading shared memory only."""
