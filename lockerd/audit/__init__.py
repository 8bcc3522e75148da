"""The audit log: every bank's history and every operator action, newest first, filtered."""
