"""``gateway.asgi:app``: run the gateway under any ASGI server.

The policy file comes from ``GATEWAY_CONFIG`` (default ``policies/gateway.yaml``);
stores, transports and metrics start in the ASGI lifespan.
"""

from gateway.frontends.asgi import create_app

app = create_app()
