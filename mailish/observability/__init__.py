"""Metrics (declared once, in ``metrics``) and structured logging (``logs``)."""
