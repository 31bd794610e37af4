"""Kubernetes adapters: a small async API client, the worker's identity (downward API), its
Lease heartbeat and bucket watch (``KubeAssigner``), and the names both sides agree on."""
