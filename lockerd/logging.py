"""One logging pipeline: every line lockerd writes has the same format (contract §1).

lockerd's own code logs through structlog; libraries and the few modules that must use the
standard library's ``logging`` (the MQTT adapter, the store threads) log through stdlib
loggers. Both end in the same renderer: structlog loggers render directly, and stdlib records
go through :class:`structlog.stdlib.ProcessorFormatter` with the same processors, so a JSON
deployment gets only JSON lines and a terminal only console lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

import structlog

from lockerd.config import ConfigError

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("json", "console")


def parse_level(text: str) -> int:
    """``debug``/``info``/``warning``/``error`` (any case) as a stdlib level number."""
    lowered = text.strip().lower()
    if lowered not in LEVELS:
        expected = ", ".join(LEVELS)
        raise ConfigError("LOCKERD_LOG_LEVEL", f"expected one of {expected}, got {text!r}")
    return logging.getLevelNamesMapping()[lowered.upper()]


def parse_format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in FORMATS:
        expected = ", ".join(FORMATS)
        raise ConfigError("LOCKERD_LOG_FORMAT", f"expected one of {expected}, got {text!r}")
    return lowered


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in one format, at one level.

    Raises :class:`~lockerd.config.ConfigError` naming the variable for an unknown format or
    level, before anything is changed.
    """
    threshold = parse_level(level)
    renderer: structlog.types.Processor
    if parse_format(fmt) == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
