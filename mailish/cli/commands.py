"""The long-running commands, each an ``async (settings, args) -> exit code``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys

from mailish.api.app import create_app
from mailish.cli.database import database, migrate_to_latest, next_local_epoch
from mailish.cli.jobs import Job, run_jobs, stop_on_signals
from mailish.cli.keys import keyring
from mailish.cli.probes import ProbeServer
from mailish.cli.serving import ApiServer
from mailish.config import Settings
from mailish.domain.errors import ConfigError
from mailish.kube import identity as kube_identity
from mailish.kube.assigning import KubeAssigner
from mailish.kube.client import KubeClient
from mailish.kube.connecting import load_connection
from mailish.kube.leasing import LeaseTiming
from mailish.mail.policy import ConnectionPolicy
from mailish.observability import crashpoints
from mailish.services.brokers import broker_from, close_broker
from mailish.store import connecting, migrating
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import Assigner, StaticAssigner
from mailish.worker.running import Worker, WorkerTuning

log = logging.getLogger(__name__)
POD_NETWORK = "0.0.0.0"  # noqa: S104 - probes and scrapes come from the pod network


async def up(settings: Settings, _args: argparse.Namespace) -> int:
    async with stop_on_signals() as stop, database(settings) as dsn:
        await migrate_to_latest(dsn, settings)
        ring = keyring(settings, local=True)
        broker = broker_from(settings, ring)  # one per process: the API and the worker share it
        api = ApiServer(create_app(settings, dsn=dsn, keyring=ring, broker=broker), settings)
        api.bind()
        pool = await connecting.connect_pool(dsn, min_size=1, max_size=settings.db_pool_max)
        try:
            epoch = await next_local_epoch(pool)
            worker = Worker(
                pool=pool,
                assigner=StaticAssigner(
                    buckets=settings.buckets, owner=settings.worker_id, epoch=epoch
                ),
                keyring=ring,
                policy=ConnectionPolicy.from_settings(settings),
                tuning=worker_tuning(settings),
                dsn=dsn,
                broker=broker,
            )
            print(
                f"mailish is up: API http://{settings.api_host}:{api.port} "
                f"(health /healthz, metrics /metrics); worker {settings.worker_id} owns "
                f"{settings.buckets} buckets at epoch {epoch}. Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )
            await run_jobs(stop, [Job("api", api.serve, api.stop), Job("worker", worker.run)])
        finally:
            await pool.close()
            await close_broker(broker)
    return 0


async def api(settings: Settings, _args: argparse.Namespace) -> int:
    dsn = _required_dsn(settings)
    ring = keyring(settings, local=False)
    await _check_schema(dsn, settings)
    async with stop_on_signals() as stop:
        server = ApiServer(create_app(settings, dsn=dsn, keyring=ring), settings)
        server.bind()
        await run_jobs(stop, [Job("api", server.serve, server.stop)])
    return 0


async def worker(settings: Settings, _args: argparse.Namespace) -> int:
    """In a pod (POD_NAME set) buckets come from the operator; elsewhere this worker owns
    every bucket at a fresh epoch."""
    dsn = _required_dsn(settings)
    ring = keyring(settings, local=False)
    crashpoints.arm_from_environment(os.environ)  # tests only; see the module docstring
    await _check_schema(dsn, settings)
    kube: KubeClient | None = None
    broker = broker_from(settings, ring)
    async with stop_on_signals() as stop:
        pool = await connecting.connect_pool(dsn, min_size=1, max_size=settings.db_pool_max)
        try:
            assigner: Assigner
            if os.environ.get("POD_NAME"):
                me = kube_identity.from_environment()
                connection = load_connection()
                kube = KubeClient(connection)
                assigner = KubeAssigner(
                    client=kube, identity=me, namespace=me.namespace or connection.namespace,
                    timing=LeaseTiming(duration=settings.lease_duration),
                )  # fmt: skip
            else:
                epoch = await next_local_epoch(pool)
                assigner = StaticAssigner(
                    buckets=settings.buckets, owner=settings.worker_id, epoch=epoch
                )
            worker = Worker(
                pool=pool,
                assigner=assigner,
                keyring=ring,
                policy=ConnectionPolicy.from_settings(settings),
                tuning=worker_tuning(settings),
                dsn=dsn,
                broker=broker,
            )
            jobs = [Job("worker", worker.run)]
            if settings.metrics_port is not None:
                probes = ProbeServer(
                    host=POD_NETWORK, port=settings.metrics_port, ready=lambda: worker.started
                )
                jobs.append(Job("probes", probes.serve, probes.stop))
            await run_jobs(stop, jobs)
        finally:
            if kube is not None:
                await kube.aclose()
            await pool.close()
            await close_broker(broker)
    return 0


async def operator(settings: Settings, args: argparse.Namespace) -> int:
    """kopf handles SIGINT/SIGTERM itself and returns when told to stop."""
    from mailish.operator import running

    probes = None
    if settings.metrics_port is not None:
        probes = ProbeServer(host=POD_NETWORK, port=settings.metrics_port, ready=lambda: True)
        serving = asyncio.create_task(probes.serve(), name="probes")
    try:
        await running.run(namespace=args.namespace, liveness_endpoint="http://0.0.0.0:8081/healthz")
    finally:
        if probes is not None:
            probes.stop()
            await asyncio.gather(serving, return_exceptions=True)
    return 0


async def migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async with database(settings) as dsn:
        applied = await migrate_to_latest(dsn, settings)
    print(f"mailish: schema up to date ({len(applied)} migration(s) applied)", file=sys.stderr)
    return 0


def worker_tuning(settings: Settings) -> WorkerTuning:
    return WorkerTuning(
        audit_interval=settings.worker_audit_interval,
        sync=SyncTuning(
            batch=settings.sync_batch,
            poll_interval=settings.sync_poll_interval,
            notify_poll_interval=settings.sync_notify_poll_interval,
            changes_retention=dt.timedelta(days=settings.changes_retention_days),
        ),
    )


async def _check_schema(dsn: str, settings: Settings) -> None:
    conn = await connecting.connect(dsn, connect_timeout=settings.db_connect_timeout)
    try:
        await migrating.require_current(conn)
    finally:
        await conn.close()


def _required_dsn(settings: Settings) -> str:
    dsn = settings.database_dsn()
    if dsn is None:
        raise ConfigError("MAILISH_DATABASE_URL is required for this command (or use `mailish up`)")
    return dsn
