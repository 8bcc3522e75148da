"""The actor runtime and the bank actors: the imperative shell around the domain.

Supervision with backoff and an OTP restart budget, bounded mailboxes, one actor per locker
bank (started on demand by the registry), the timer actor and the outbox dispatcher, and the
live fleet view. Imports ``domain`` and the small protocols declared in :mod:`actors.ports`
(an event log, a device publisher, an observer, a bank catalog); never ``gateway``, ``store``
backends, HTTP or ``lockerd``.
"""
