"""Model serving: TF Serving configs and a development server speaking its REST API.

Start one in-process (e.g. in tests) with::

    from serving import ModelServer

    with ModelServer(rest_api_port=0, model_config_file=..., models_dir=...) as server:
        requests.get(f"{server.url}/v1/models/mnist")

Importing this package does not import TensorFlow; ModelServer does, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.errors import ConfigError, ServingError
    from serving.server import ModelServer, ServerOptions

__all__ = ["ConfigError", "ModelServer", "ServerOptions", "ServingError"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m serving --help` and config tooling stay fast.
    if name in ("ModelServer", "ServerOptions"):
        from serving import server

        return getattr(server, name)
    if name in ("ConfigError", "ServingError"):
        from serving import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
