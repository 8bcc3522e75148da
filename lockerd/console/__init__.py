"""``GET /console``: the operators' web console, a one-page app over the public API only."""
