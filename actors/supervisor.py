"""Supervision in the manner of Erlang/OTP, on a Trio nursery.

A :class:`Supervisor` owns its children in its own nursery. When a child raises, it is restarted
after an exponential backoff with jitter (Akka's ``restartWithBackoff``), as long as the
restart budget holds: at most ``max_restarts`` within ``within_seconds`` (OTP's intensity and
period). Past the budget the child is marked ``failed`` and the failure goes upward, never
swallowed: with ``escalate=True`` the supervisor raises :class:`ChildFailed` out of its nursery
(its parent then deals with it, as an OTP supervisor terminating itself); with
``escalate=False`` it reports through ``on_change`` and keeps its other children running, which
is what a fleet of independent locker banks wants (one poisoned bank must not stop the others).

A child that returns normally is finished (a *transient* child in OTP terms) and not restarted;
so is a child stopped with :meth:`Supervisor.stop_child` (its body is cancelled, it ends
``stopped``). A name may be started again once its child has failed or stopped: the new child
has a fresh restart budget.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

log = structlog.get_logger("lockerd.supervisor")

ChildStatus = Literal["starting", "running", "restarting", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5
    within_seconds: float = 10.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    jitter: float = 0.2

    def backoff(self, consecutive_failures: int, rng: random.Random) -> float:
        growth = 2.0 ** (consecutive_failures - 1)
        base: float = min(self.backoff_max, self.backoff_initial * growth)
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


class ChildFailed(Exception):
    """A child crashed more often than its restart budget allows."""

    def __init__(self, name: str, restarts: int, cause: BaseException) -> None:
        super().__init__(f"{name} exceeded its restart budget after {restarts} restarts: {cause!r}")
        self.name = name
        self.restarts = restarts
        self.cause = cause


@dataclass(slots=True)
class ChildInfo:
    """What a supervisor knows about one child; read by the dashboard."""

    name: str
    status: ChildStatus = "starting"
    restarts: int = 0
    last_error: str | None = None
    _recent: deque[float] = field(default_factory=deque)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)


ChildBody = Callable[[], Awaitable[None]]
ChangeListener = Callable[[ChildInfo], None]


class Supervisor:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        name: str,
        policy: RestartPolicy = RestartPolicy(),
        escalate: bool = True,
        on_change: ChangeListener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._nursery = nursery
        self.name = name
        self.policy = policy
        self.escalate = escalate
        self.children: dict[str, ChildInfo] = {}
        self._on_change = on_change
        self._rng = rng or random.Random()

    def start_child(
        self, name: str, body: ChildBody, *, policy: RestartPolicy | None = None
    ) -> ChildInfo:
        """Start ``body`` under supervision; ``body`` is called afresh for every restart."""
        info = ChildInfo(name)
        self.children[name] = info
        self._nursery.start_soon(self._supervise, info, body, policy or self.policy, name=name)
        return info

    def stop_child(self, name: str) -> None:
        """Cancel the child's body (now, or before it starts) and end it ``stopped``.

        Unknown or already finished names are ignored. The child's status changes once its
        task has unwound (at its next checkpoint); its name may be started again at once
        (:meth:`start_child` replaces whatever child had the name).
        """
        info = self.children.pop(name, None)
        if info is not None:
            info._scope.cancel()

    def _changed(self, info: ChildInfo, status: ChildStatus) -> None:
        info.status = status
        if self._on_change is not None:
            self._on_change(info)

    async def _supervise(self, info: ChildInfo, body: ChildBody, policy: RestartPolicy) -> None:
        with info._scope:
            await self._restart_loop(info, body, policy)
        if info._scope.cancelled_caught:
            self._changed(info, "stopped")

    async def _restart_loop(self, info: ChildInfo, body: ChildBody, policy: RestartPolicy) -> None:
        consecutive = 0
        while True:
            self._changed(info, "running")
            started = trio.current_time()
            try:
                await body()
            except Exception as exc:  # crashing children is what we supervise
                error = exc
            else:
                self._changed(info, "stopped")
                return
            now = trio.current_time()
            if now - started > policy.within_seconds:
                consecutive = 0  # it ran stably for a whole period: start the backoff afresh
            info.last_error = repr(error)
            info._recent.append(now)
            while info._recent and now - info._recent[0] > policy.within_seconds:
                info._recent.popleft()
            if len(info._recent) > policy.max_restarts:
                self._changed(info, "failed")
                log.error(
                    "child_failed",
                    supervisor=self.name,
                    child=info.name,
                    restarts=info.restarts,
                    error=info.last_error,
                )
                if self.escalate:
                    raise ChildFailed(info.name, info.restarts, error) from error
                return
            consecutive += 1
            info.restarts += 1
            delay = policy.backoff(consecutive, self._rng)
            log.warning(
                "child_crashed",
                supervisor=self.name,
                child=info.name,
                restarts=info.restarts,
                backoff_seconds=round(delay, 3),
                error=info.last_error,
                exc_info=error,
            )
            self._changed(info, "restarting")
            await trio.sleep(delay)
