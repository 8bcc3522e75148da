"""Broker authentication for mosquitto-go-auth's HTTP backend (contract §3).

``checks`` answers auth, superuser and ACL checks from memory (over :mod:`gateway.acl`, the
topic rules beside the topic module); ``routes`` serves them at ``/api/mosq/*``. May import
``domain``, ``gateway.acl``, ``lockerd.banks``, ``lockerd.telemetry`` and ``lockerd.http``.
"""
