"""What both services are built with: the HTTP server and its middlewares, the web configuration
(TLS, basic auth), the legacy password and its limiter, command-line argument types and logging.

``exporter`` and ``status_api`` import this package and never each other.
"""
