"""The HTTP front end shared by the capabilities (Quart-Trio on Hypercorn).

The app factory, contract-shaped errors, bearer-token authentication, strict body validation,
path ids, the one ask-a-bank helper, websocket plumbing and the health/metrics routes. May
import ``domain``, ``actors`` (the registry's answers) and ``store.base``; the capability
packages import it, never the reverse (it reaches the running service only through
:func:`lockerd.http.context.ctx`).
"""
