"""structlog set-up: key-value events with stable names; JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal

import structlog


@dataclass(frozen=True)
class LogConfig:
    """[log]"""

    SECTION: ClassVar[str] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: console on a terminal, JSON otherwise
    format: Literal["auto", "console", "json"] = "auto"


def setup(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and friends log through stdlib logging; keep their warnings, on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
