"""Trace replay against the server or the in-process engine: workload, client, metrics."""
