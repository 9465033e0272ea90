"""The bottom layer: what every package (etlcore, connectors, warehouse, spark_jobs) may import.

It imports none of them, and no Django app, so it can never close an import cycle."""
