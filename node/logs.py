"""One log format for everything a node process logs: its own loggers (bws.*),
py-libp2p's, JAX's, absl's and TensorFlow's, and Python warnings.

    2026-12-08T02:56:03.987+0000 INFO bws.node.roles.miner: mined block 1 (task 18bd0488eccd… iteration 0)

Time (ISO 8601, local offset), level, logger, message; one record a line
(a traceback follows its record). To stderr, or with `--log-file FILE` to that
file only, appended to and reopened when something (logrotate) moves it.

py-libp2p configures its logger when it is imported: with $LIBP2P_DEBUG
unset, it stops it propagating, and its warnings reached stderr bare, through
logging's last-resort handler; with it set, in a format of its own and a
temporary file. Both are undone here: its records go through the root
handler like every other, at WARNING at least (its INFO and DEBUG are a line
per stream and message). Messages that C++ code (XLA, TensorFlow) writes to
the process's stderr itself do not pass through Python's logging and keep
their form.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import time
import warnings
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
LIBP2P_LOGGER = "libp2p"


class NodeLogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        local = time.localtime(record.created)
        return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(record.msecs):03d}"
                + time.strftime("%z", local))


def _is_libp2p(name: str) -> bool:
    return name == LIBP2P_LOGGER or name.startswith(LIBP2P_LOGGER + ".")


def configure_logging(level: str, log_file: Path | None = None) -> None:
    """Route every logger of the process to one handler in the node's format; `level` is one of LOG_LEVELS."""
    import libp2p  # noqa: F401  its import configures its logger (module docstring); undone below, after it

    if log_file is not None:
        try:
            handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot open the log file {log_file}: {error.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(NodeLogFormatter())
    libp2p_level = max(logging.WARNING, logging.getLevelName(level.upper()))
    # A filter, not only the libp2p logger's level: some of its modules set their own logger's level (INFO).
    handler.addFilter(lambda record: record.levelno >= libp2p_level or not _is_libp2p(record.name))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER)
    for old in libp2p_logger.handlers[:]:
        libp2p_logger.removeHandler(old)
    libp2p_logger.propagate = True
    libp2p_logger.setLevel(libp2p_level)
    warnings.showwarning = _log_warning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one record each (logging.captureWarnings' adds the source line on a line of its own)."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)
