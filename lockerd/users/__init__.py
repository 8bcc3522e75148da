"""People: user accounts, sessions, grants and the app routes (open, QR, transactions).

Users and sessions are plain tables (not projections: they are not derived from bank events).
Everything that concerns a compartment (grants, opening) is decided by the bank's actor.
"""
