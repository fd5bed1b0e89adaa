"""Which app of a port answers a request: path, then body, then passive.

1. The apps whose `path` is a prefix of the request path at a segment
   boundary are candidates (`/v1` takes `/v1`, `/v1/x`, `/v1?q`, not
   `/v10`); those with the longest such `path` win.
2. Among them the first, in file order, whose `body_regex` matches the raw
   body; else the one without a `body_regex`; else no app (404).
3. A path under the chosen app's `passive_paths` never starts an app: it
   goes to whichever app of the same port and path is running.

RE2 searches in time linear in the body, so a 2 MB prompt that does not
match is routed in a few milliseconds whatever the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rph.config import AppConfig, compile_body_regex
from rph.errors import NoRoute

# A request that no app takes (a control endpoint, or a 404) has its body
# read only to keep the connection in step; none of them needs more.
NO_APP_BODY_LIMIT = 1024 * 1024


def under(path: str, prefix: str) -> bool:
    """True if `prefix` is `path` or one of its leading segments."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class Route:
    """The app chosen for a request, and how it may be reached."""

    app: AppConfig
    passive: bool
    # For a passive request: every app of the same port and path.
    siblings: tuple[str, ...]


class PortRouter:
    """Routes the requests of one listening port."""

    def __init__(self, apps: list[AppConfig]) -> None:
        self.apps = apps
        self._patterns: dict[str, Any] = {
            app.name: compile_body_regex(app.body_regex)
            for app in apps
            if app.body_regex is not None
        }
        # Longest paths first: the first group that matches wins.
        self._paths = sorted({app.path for app in apps}, key=len, reverse=True)

    def _candidates(self, path: str) -> list[AppConfig]:
        for prefix in self._paths:
            if under(path, prefix):
                return [app for app in self.apps if app.path == prefix]
        return []

    def body_limit(self, path: str) -> int:
        """The largest body any app that may take `path` accepts."""
        candidates = self._candidates(path)
        return max((app.max_body for app in candidates), default=NO_APP_BODY_LIMIT)

    def reads_body(self, path: str) -> bool:
        """Whether the route of `path` may depend on the request's body."""
        return any(app.body_regex is not None for app in self._candidates(path))

    def _no_route_message(self, path: str, candidates: list[AppConfig]) -> str:
        if not candidates:
            return f"no app on this port answers {path}"
        names = ", ".join(app.name for app in candidates)
        prefix = candidates[0].path
        failed = f"no body_regex of the apps of {prefix} ({names}) matched"
        if not any(under(path, p) for p in self._paths if len(p) < len(prefix)):
            return f"no app on this port answers {path} with this body: {failed}"
        # The longest path wins even when its apps all turn the body down; say
        # so, or an app of a shorter path whose pattern fits looks passed over.
        return (
            f"no app on this port answers {path} with this body: requests under"
            f" {prefix} go only to the apps of that path, and {failed}"
        )

    def route(self, path: str, body: bytes | bytearray) -> Route:
        """The route for a request; raises NoRoute (404)."""
        candidates = self._candidates(path)
        chosen = None
        for app in candidates:
            pattern = self._patterns.get(app.name)
            if pattern is not None and pattern.search(body):
                chosen = app
                break
        if chosen is None:
            chosen = next((a for a in candidates if a.body_regex is None), None)
        if chosen is None:
            raise NoRoute(self._no_route_message(path, candidates))
        passive = any(under(path, p) for p in chosen.passive_paths)
        siblings = tuple(a.name for a in candidates) if passive else ()
        return Route(chosen, passive, siblings)
