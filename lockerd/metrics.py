"""Prometheus metrics of one lockerd instance (own registry, so tests can run several).

:class:`Metrics` is the observer every layer reports to: it implements the actors'
:class:`~actors.ports.ActorObserver` and the gateway's :class:`~gateway.router.GatewayObserver`
structurally, so neither layer imports this module.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: The kinds of ``lockerd_inbound_messages_total``: the contract's topic families, and
#: ``unknown`` for a message whose topic fits none of them (contract §2: every message lockerd
#: receives is counted exactly once, malformed topics included).
INBOUND_KINDS = ("register", "state", "response", "event", "metric", "unknown")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound = Counter(
            "lockerd_inbound_messages",
            "Inbound messages by kind and outcome (processed: applied by its actor; dropped:"
            " malformed, unknown or duplicate)",
            ["kind", "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "lockerd_dropped_messages",
            "Dropped inbound messages by reason",
            ["kind", "reason"],
            registry=r,
        )
        self.outbound = Counter(
            "lockerd_outbound_messages", "Messages published by kind", ["kind"], registry=r
        )
        self.actor_restarts = Counter(
            "lockerd_actor_restarts", "Actor restarts after a crash", ["actor"], registry=r
        )
        self.actors_failed = Gauge(
            "lockerd_actors_failed", "Actors that exceeded their restart budget", registry=r
        )
        self.actors_running = Gauge("lockerd_actors_running", "Bank actors running", registry=r)
        self.mailbox_depth = Gauge(
            "lockerd_mailbox_depth_total", "Messages waiting in all bank mailboxes", registry=r
        )
        self.command_outcomes = Counter(
            "lockerd_command_outcomes",
            "Finished commands by action and status",
            ["action", "status"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "lockerd_alert_webhook_deliveries",
            "Alert webhook requests by outcome (delivered: a 2xx; failed: retried later)",
            ["outcome"],
            registry=r,
        )
        self.goauth_checks = Counter(
            "lockerd_goauth_checks",
            "go-auth checks by endpoint and result",
            ["endpoint", "result"],
            registry=r,
        )
        self.store_append_seconds = Histogram(
            "lockerd_store_append_seconds",
            "Event store append latency",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "lockerd_mqtt_connected", "1 while the gateway is connected to the broker", registry=r
        )
        # labelled children resolved once: processed() runs for every inbound message
        self._processed = {kind: self.inbound.labels(kind, "processed") for kind in INBOUND_KINDS}
        for kind in INBOUND_KINDS:
            self.inbound.labels(kind, "dropped")

    # --- inbound messages (actors, gateway, metrics pipeline) ----------------------------

    def message_processed(self, kind: str | None) -> None:
        if kind is not None:
            self._processed[kind].inc()

    def message_dropped(self, kind: str | None, reason: str) -> None:
        if kind is not None:
            self.inbound.labels(kind, "dropped").inc()
            self.dropped.labels(kind, reason).inc()

    # --- actors ---------------------------------------------------------------------------

    def append_took(self, seconds: float) -> None:
        self.store_append_seconds.observe(seconds)

    def command_finished(self, action: str, status: str) -> None:
        self.command_outcomes.labels(action, status).inc()

    def bank_actors_running(self, count: int) -> None:
        self.actors_running.set(count)

    def bank_actor_restarted(self) -> None:
        self.actor_restarts.labels("bank").inc()

    def bank_actor_failed(self) -> None:
        self.actors_failed.inc()

    def bank_actor_recovered(self) -> None:
        self.actors_failed.dec()

    def device_message_sent(self, kind: str) -> None:
        self.outbound.labels(kind).inc()

    # --- gateway --------------------------------------------------------------------------

    def alert_delivery(self, outcome: str) -> None:
        self.alert_deliveries.labels(outcome).inc()

    def mqtt_connection(self, connected: bool) -> None:
        self.mqtt_connected.set(1 if connected else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
