"""The pure core of lockerd: what a locker bank is and does, with no I/O at all.

A bank's behaviour is ``decide(state, command, now) -> events`` and ``evolve(state, event) ->
state`` (:mod:`domain.bank`), over immutable states (:mod:`domain.state`, pyrsistent maps) and
typed events (:mod:`domain.events`). Beside it: commands, snapshots, the Modbus configuration
hash, QR codes, keyed hashing of secrets, the one rate limiter, the one retry backoff
(:mod:`domain.backoff`), the wire time format, the
records an event store keeps (:mod:`domain.records`) and the messages for devices
(:mod:`domain.outbound`).

Imports: the standard library, msgspec and pyrsistent only. Never Trio, MQTT, SQL or any
other lockerd package (a test reads the imports).
"""
