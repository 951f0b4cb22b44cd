"""What both services are built with, one concern a module.

Serving: :mod:`~servicekit.runner` (build and run the server), :mod:`~servicekit.limits`
(request deadlines, body caps, per-client slots), :mod:`~servicekit.middleware` (in-flight limit,
headers), :mod:`~servicekit.basicauth`, :mod:`~servicekit.tls`. Configuration:
:mod:`~servicekit.webconfig` (the exporter-toolkit file), :mod:`~servicekit.filewatch` (reloading
any file), :mod:`~servicekit.cliargs` and :mod:`~servicekit.logsetup`. The legacy password:
:mod:`~servicekit.password` and :mod:`~servicekit.limiter`. Answers: :mod:`~servicekit.responses`
(JSON errors), :mod:`~servicekit.metricsformat` (``/metrics`` negotiation),
:mod:`~servicekit.exposition` (the text and OpenMetrics writer), :mod:`~servicekit.encoding` (gzip).
Process: :mod:`~servicekit.memory` (malloc arenas).

``exporter`` and ``status_api`` import this package and never each other.
"""
