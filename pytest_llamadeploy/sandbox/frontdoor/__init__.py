"""The sandbox's front door: API Gateway + Lambda alias routing on one loopback port.

``python -m pytest_llamadeploy.sandbox.frontdoor --port P --state-dir D``.
Routing (``routing.py``) reads the alias from moto; the ASGI app (``app.py``)
proxies HTTP and WebSocket to the chosen version's service process; telemetry
(``telemetry.py``) publishes metrics, logs and traces to moto each second.
"""
