"""Settings from environment variables: one reader and one error for every part that has settings (the service's
in orchestrator.settings, image fetching's in integrations.images, the deployment's in orchestrator.serving.app).
Kept at the edge, where every side may import it."""
from __future__ import annotations

import os
from collections.abc import Mapping


class SettingsError(ValueError):
    """A variable has a value that cannot be used; the message names the variable."""


class EnvReader:
    """Reads variables from `env` (default: the process environment). A variable set to spaces counts as unset."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = os.environ if env is None else env

    def text(self, name: str) -> str | None:
        return self.env.get(name, "").strip() or None

    def number(self, name: str, default, kind=int, low=None):
        """`kind(value)`, or `default` when unset; at least `low` when given."""
        raw = self.text(name)
        try:
            value = kind(raw) if raw is not None else default
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
        if low is not None and value is not None and value < low:
            raise SettingsError(f"{name} must be at least {low}")
        return value

    def names(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, lower case."""
        return tuple(p.strip().lower() for p in (self.text(name) or "").split(",") if p.strip())
