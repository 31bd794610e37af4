"""The worker: owns buckets, runs one supervised sync loop per account in them, applies queued
operations and sends from the outbox, with every write fenced by the bucket's epoch."""
