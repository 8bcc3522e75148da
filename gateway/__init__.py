"""The MQTT side: the Trio adapter over paho-mqtt, topics, payloads, the ACL and the router.

:mod:`gateway.mqtt` is the client; :mod:`gateway.topics` and :mod:`gateway.payloads` parse
what devices send, :mod:`gateway.outbound` spells what the backend sends, :mod:`gateway.acl`
says who may publish or subscribe to which topic, and :mod:`gateway.router` (the gateway
actor) turns inbound messages into bank commands through the protocols it declares. Imports
``domain`` only (plus paho-mqtt and Trio); never ``actors``, HTTP or ``lockerd``.
"""
