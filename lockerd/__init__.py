"""lockerd, the application: the top layer.

The composition root (:mod:`lockerd.service`, building the typed :class:`~lockerd.wiring.Service`),
configuration (:mod:`lockerd.config`), logging, Prometheus metrics, the CLI
(:mod:`lockerd.cli`, :mod:`lockerd.commands`) and one package per capability, each with its
routes and its read-model SQL: ``banks``, ``users``, ``telemetry``, ``dashboard``,
``brokerauth``; ``http`` is the HTTP front end they share; ``device`` is the reference device
(simulator). May import every lower layer: ``domain``, ``store``, ``actors``, ``gateway``.
"""
