"""The reference device: the device side of the MQTT contract, and simulated locker banks.

``protocol`` is a second, independent reading of contract §2 (topics, payloads, the config
hash) written for firmware authors; it deliberately imports none of the backend's own
implementation (``domain``), so the tests that check both agree mean something. ``simulated``
and ``fleet`` run simulated banks over MQTT (``lockerd simulate``). May import ``gateway.mqtt``
(the Trio MQTT client) and the standard library.
"""
