"""The real RabbitMQ the tests use (127.0.0.1:5672, guest; tests/run.sh starts it)."""

from __future__ import annotations

import socket

from tests.conftest import require

URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """Skip (laptop) or fail (CI=true) when RabbitMQ is not there."""
    require(broker_up(), "needs RabbitMQ at 127.0.0.1:5672 (rabbitmq-server -detached)")
