"""Telemetry: tenants, metrics agents and the one ingestion pipeline for metric points.

* :mod:`lockerd.telemetry.schema` — the plain tables (not event-sourced) and time helpers.
* :mod:`lockerd.telemetry.agents` — the in-memory tenant/agent directory and its writes.
* :mod:`lockerd.telemetry.points` — decoding and validating one point (pure, no I/O).
* :mod:`lockerd.telemetry.pipeline` — the ingestion actor: bounded channel, batched writes,
  dedupe across MQTT and HTTP, live subscribers.
* :mod:`lockerd.telemetry.query` — time-ordered reads for the admin API.
* :mod:`lockerd.telemetry.routes` — the HTTP routes.

The composition root (:mod:`lockerd.service`) wires them into the running service. May import
``domain``, ``store.base``, ``lockerd.http`` and ``lockerd.metrics``.
"""
