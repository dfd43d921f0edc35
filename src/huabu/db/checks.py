"""The last check before a row is written: every text column's value is text PostgreSQL can
hold and fits its column, every JSON column's values are finite and storable (``values``).

Requests are checked where they arrive, naming the client's field; this catches what any
path into a row might still carry (a name built from a request, an option, a webhook URL), so
that it is a 400 naming the column, and never a database error answered as a 500.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, event, inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from huabu.errors import InvalidRequest
from huabu.values import check_values, checked_text


def _check(instance: Any) -> None:
    state = inspect(instance)
    for column in state.mapper.columns:
        key = state.mapper.get_property_by_column(column).key
        value = state.dict.get(key)  # only what is loaded or set: nothing is fetched
        if value is None:
            continue
        if isinstance(column.type, String) and isinstance(value, str):
            checked_text(value, (key,))
            if column.type.length is not None and len(value) > column.type.length:
                raise InvalidRequest(
                    f"{key} is {len(value)} characters long; at most {column.type.length}",
                    param=key,
                )
        elif isinstance(column.type, JSONB):
            check_values(value, (key,))


def _before_flush(session: Session, context: Any, instances: Any) -> None:
    for instance in (*session.new, *session.dirty):
        _check(instance)


def install(sessions: Any) -> None:
    """Check every row a session of ``sessions`` (a sessionmaker) writes."""
    event.listen(sessions, "before_flush", _before_flush)
