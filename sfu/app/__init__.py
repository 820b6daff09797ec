"""The composition root: the one place that builds processes out of the media plane
(``sfu/``) and the web tier (``signaling/``, FastAPI on uvicorn).

- :mod:`sfu.app.cli`: the ``sfu`` command (``serve``, ``signaling``, ``worker``,
  ``token``, ``drain``, ``load-test``).
- :mod:`sfu.app.embedded`: the embedded server's app, a signaling app given an
  in-process :class:`~sfu.worker.Worker`.
- :mod:`sfu.app.processes`: the cluster's ``sfu signaling`` and ``sfu worker`` processes.
- :mod:`sfu.app.http_server`: the uvicorn server every process serves HTTP with.
- :mod:`sfu.app.metrics_server`: ``/metrics`` for a process without an HTTP app.

Nothing else imports this package, and nothing outside it imports ``signaling``,
``fastapi`` or ``uvicorn`` from ``sfu/``; ``signaling/`` is handed a
:class:`~sfu.worker_api.MediaWorker` and never builds one. The import-linter contracts
in ``pyproject.toml`` (``tests/test_layers.py``) check both.
"""
