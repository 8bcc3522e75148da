"""Alerts (contract §5): raised by a bank's own events, acknowledged by operators, resolved by
the bank; a read model, a webhook outbox, live messages on ``/ws/status``; see docs/alerts.md."""
