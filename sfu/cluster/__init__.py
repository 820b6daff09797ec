"""Horizontal scale: signaling nodes and media workers coordinated through a backend.

The backend (:class:`~sfu.cluster.backend.ClusterBackend`) is the registry of live
workers, the room placement, and the bus between the tiers. Redis implements it for
deployments (:mod:`sfu.cluster.redis_backend`); :mod:`sfu.cluster.memory` implements
it in-process for tests. :class:`~sfu.cluster.router.ClusterRouter` is the
:class:`~sfu.worker_api.MediaWorker` a signaling node passes to its sessions, and
:class:`~sfu.cluster.worker_service.WorkerService` serves one media worker on the bus.
"""
