"""Log lines that request data cannot forge.

A message may carry what a client sent (a path, a model name); a newline in it would start a
fake log line. The text format escapes control characters in the message (a traceback, which
is huabu's own, keeps its lines); ``HUABU_LOG_FORMAT=json`` writes one JSON object a line,
what log collectors read.
"""

from __future__ import annotations

import json
import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\ud800-\udfff]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\u2028\u2029\ud800-\udfff]")


def _escape(found: re.Match[str]) -> str:
    return found[0].encode("unicode_escape").decode("ascii")


def escaped(text: str) -> str:
    """``text`` with control characters (and lone surrogates) as ``\\n``, ``\\x1b``, …"""
    return _CONTROL.sub(_escape, text)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escaped(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        # A traceback keeps its lines; what an exception's text quotes keeps none of its own.
        return _CONTROL_BUT_NEWLINE.sub(_escape, super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()
    return TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
