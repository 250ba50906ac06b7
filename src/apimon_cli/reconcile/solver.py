"""The one place that orders and runs changes: a dependency graph on ``graphlib.TopologicalSorter``, run by
bounded workers under the provider's ``ApplyPolicy``.

Dependencies come from the kinds (``reconcile.kinds``): a change that needs its parent (a create, a
replacement, an adoption, a move) waits for the parent's create/update in the same apply, and a parent's
delete waits for every change that leaves it. Ready changes start in plan order. After a failure nothing
new starts; changes already running finish and are reported. The provider tunes, never orders:

- ``workers``: changes in flight at once (1: one after the other, on the calling thread);
- ``per_kind``: at most this many changes of a kind in flight (Azure writes products one at a time);
- ``phased``: a change starts only when every change of an earlier rank has finished (Azure);
- ``pacing``: the provider's call-level pacing (AWS's quota scheduler, ``aws.scheduler.Quotas``); the
  solver only cancels it when the apply stops, so calls waiting for a quota token are not sent.
"""

from __future__ import annotations

import heapq
import queue
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Protocol

from .changes import Change
from .kinds import kind, rank


class Cancelled(Exception):
    """The apply is stopping: work still waiting to start (for a worker, a quota token) is not started."""


class Pacing(Protocol):
    def cancel(self) -> None:
        """Stop: whatever waits to be sent raises ``Cancelled``."""


@dataclass(frozen=True)
class ApplyPolicy:
    workers: int = 1
    per_kind: Mapping[str, int] = field(default_factory=dict)
    phased: bool = False
    pacing: Pacing | None = None


def needs_parent(c: Change) -> bool:
    return c.action in ("create", "replace") or c.adopt or _moves(c)


def leaves_parent(c: Change) -> bool:
    return c.action in ("delete", "replace") or _moves(c)


def _moves(c: Change) -> bool:
    k = kind(c.kind)
    return k.parent_field is not None and c.changed(k.parent_field)


def dependencies(changes: list[Change]) -> dict[int, set[int]]:
    """Change index -> the indexes of the changes it must wait for."""
    applying = {(c.kind, c.id): i for i, c in enumerate(changes) if c.action != "delete"}
    deleting = {(c.kind, c.id): i for i, c in enumerate(changes) if c.action == "delete"}
    deps: dict[int, set[int]] = {i: set() for i in range(len(changes))}
    for i, c in enumerate(changes):
        k = kind(c.kind)
        if k.parent is None:
            continue
        if c.action != "delete" and needs_parent(c):
            deps[i].update(j for p in k.parents(c.desired) if (j := applying.get((k.parent, p))) is not None)
        if c.live is not None and leaves_parent(c):
            for p in k.parents(c.live):
                j = deleting.get((k.parent, p))
                if j is not None:
                    deps[j].add(i)
    return deps


Outcome = object  # whatever ``execute`` returns for a change that was attempted


@dataclass(frozen=True)
class _Raised:
    exc: BaseException


def run(changes: list[Change], execute: Callable[[Change], Outcome], failed: Callable[[Outcome], bool],
        policy: ApplyPolicy, on_outcome: Callable[[Outcome], None]) -> set[int]:
    """Run ``execute`` on every change in dependency order under ``policy``; ``on_outcome`` sees each outcome
    on this thread, as it comes. ``execute`` raising ``Cancelled`` means the change was not started.
    Returns the indexes of the changes that were attempted."""
    if not changes:
        return set()
    graph = TopologicalSorter(dependencies(changes))
    graph.prepare()
    ranks = [rank(c.kind, c.action) for c in changes]
    unfinished = Counter(ranks)
    ready: list[int] = []
    running: Counter[str] = Counter()
    attempted: set[int] = set()
    results: queue.Queue[tuple[int, Outcome | None]] = queue.Queue()
    stopped = False
    in_flight = 0
    workers = max(1, policy.workers)
    from concurrent.futures import ThreadPoolExecutor  # only for applies (not on `apimon --help`)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apimon-apply") if workers > 1 else None

    def attempt(i: int) -> None:
        try:
            results.put((i, execute(changes[i])))
        except Cancelled:
            results.put((i, None))
        except BaseException as exc:  # raised again on the solver's thread, whichever thread ran it
            results.put((i, _Raised(exc)))

    def startable(i: int) -> bool:
        limit = policy.per_kind.get(changes[i].kind)
        if limit is not None and running[changes[i].kind] >= limit:
            return False
        return not policy.phased or all(n == 0 for r, n in unfinished.items() if r < ranks[i])

    try:
        while True:
            for i in graph.get_ready():
                heapq.heappush(ready, i)
            if not stopped:
                held = []
                while ready and in_flight < workers:
                    i = heapq.heappop(ready)
                    if not startable(i):
                        held.append(i)
                        continue
                    attempted.add(i)
                    running[changes[i].kind] += 1
                    in_flight += 1
                    if pool is None:
                        attempt(i)
                    else:
                        pool.submit(attempt, i)
                for i in held:
                    heapq.heappush(ready, i)
            if in_flight == 0:
                break
            i, outcome = results.get()
            in_flight -= 1
            running[changes[i].kind] -= 1
            if isinstance(outcome, _Raised):
                raise outcome.exc
            if outcome is None:  # cancelled before it started
                attempted.discard(i)
                stopped = True
                continue
            on_outcome(outcome)
            if failed(outcome):
                stopped = True
                continue
            graph.done(i)
            unfinished[ranks[i]] -= 1
    except BaseException:
        if policy.pacing is not None:
            policy.pacing.cancel()
        if pool is not None:  # an interrupt (Ctrl-C, SIGTERM): changes in flight finish and are reported
            pool.shutdown(wait=True, cancel_futures=True)
            while not results.empty():
                _i, outcome = results.get_nowait()
                if outcome is not None and not isinstance(outcome, _Raised):
                    on_outcome(outcome)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return attempted
