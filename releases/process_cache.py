"""Objects built once per process on first use (a store, a signer), and built again when a
setting they read changes (tests change settings; a process never does)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from django.core.signals import setting_changed

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self, build: Callable[[], T], settings: set[str]):
        self._build, self._settings = build, frozenset(settings)
        self._value: T | None = None
        self._lock = threading.Lock()  # threads of one process build it once
        setting_changed.connect(self._forget, weak=False)

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._build()
        return value

    def set(self, value: T | None) -> None:
        """Use `value` from now on (None: build it again on next use)."""
        self._value = value

    def _forget(self, setting, **kwargs):
        if setting in self._settings:
            self._value = None
