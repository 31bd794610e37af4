"""Kubernetes adapters: the worker's identity (downward API), bucket watch and Lease heartbeat."""
