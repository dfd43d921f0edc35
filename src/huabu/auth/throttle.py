"""Wrong passwords slow their sender down: per account and per client address.

Checking a password costs an argon2 hash on purpose (tens of milliseconds of CPU), so a few
guesses a second would take the server's CPU from everyone. After ``attempts`` failures in a
row for one account, or ``address_attempts`` from one client address, each further try is
refused (429, Retry-After) until a wait has passed, without hashing anything; the wait
doubles with each failure, from 1 s up to 5 minutes. Behind a proxy every client has the
proxy's address unless HUABU_FORWARDED_ALLOW_IPS names it. A success clears the account's
and the address's count. The state is this process's own (each API server keeps its own
count) and bounded in size.
"""

from __future__ import annotations

import threading
import time

from huabu.errors import Overloaded

MAX_WAIT = 300.0
_MAX_ENTRIES = 100_000


class LoginThrottle:
    def __init__(self, attempts: int, address_attempts: int, *, clock=time.monotonic) -> None:
        self.attempts = attempts
        self.address_attempts = address_attempts
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key → (failures, blocked until)
        self._lock = threading.Lock()

    @staticmethod
    def keys(email: str, client: str | None) -> list[str]:
        keys = [f"account:{email.strip().lower()}"]
        if client:
            keys.append(f"address:{client}")
        return keys

    def check(self, keys: list[str]) -> None:
        """Overloaded if any of ``keys`` must still wait."""
        now = self.clock()
        wait = max((self._failures.get(key, (0, 0.0))[1] - now for key in keys), default=0.0)
        if wait > 0:
            raise Overloaded(
                f"too many wrong passwords; try again in {wait:.0f} s", retry_after=int(wait) + 1
            )

    def failed(self, keys: list[str]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= _MAX_ENTRIES:
                self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
                if len(self._failures) >= _MAX_ENTRIES:
                    self._failures.clear()
            for key in keys:
                failures = self._failures.get(key, (0, 0.0))[0] + 1
                allowed = self.address_attempts if key.startswith("address:") else self.attempts
                over = failures - allowed
                until = now + min(MAX_WAIT, 2.0**over) if over >= 0 else 0.0
                self._failures[key] = (failures, until)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
