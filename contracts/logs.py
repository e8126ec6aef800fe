"""Log lines that a log pipeline can follow a job by, on the API and on the workers.

With ``LLM_TASKS_LOG_FORMAT=json`` every line is one JSON object: ``ts``, ``level``,
``logger``, ``message``, and the context the call passed in ``extra`` (``job_id``,
``task_id``, ``kind``, ``step``, ``attempt``, ``status``, ``duration_s``…), so a job can be
followed by its id from submission to its last step. ``text`` (the default) keeps the
usual one-line format, with the ids in the message.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(log_format: str, *loggers: str) -> None:
    """Send ``loggers`` (the service's own) to stderr in ``log_format``, at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
