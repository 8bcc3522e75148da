"""Locker banks as the application serves them: admin routes, read models, the directory.

Holds the bank projections (the SQL read models kept in the append transaction), every query
of them (``queries``), the in-memory directory that answers hot-path lookups, the ``last_seen``
flusher and the admin bank routes. May import ``domain``, ``actors``, ``store.base`` and
``lockerd.http``; never ``gateway`` internals.
"""
