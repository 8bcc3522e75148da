"""People: user accounts, sessions, grants and the app routes (open, QR, transactions).

Users and sessions are plain tables (not projections: they are not derived from bank events).
Everything that concerns a compartment (grants, opening) is decided by the bank's actor; the
banks' read models are read through :mod:`lockerd.banks.queries`. May import ``domain``,
``actors`` (through :mod:`lockerd.http.asking`), ``store.base``, ``lockerd.banks`` and
``lockerd.http``.
"""
