"""Bounded-concurrency reads of API Management collections: azure-core's ``ItemPaged`` pages, fetched several
at a time with ``$top``/``$skip`` (APIM has no list of policies or API links across products, so a plan of
many products is many small reads; reading them in parallel is what keeps it fast).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

PAGE_SIZE = 100


class Scheduler:
    """Runs tasks on a bounded pool; a task's completion handler (run on this thread) may add tasks.

    No task ever waits for another, so the pool can never deadlock however small it is.
    """

    def __init__(self, pool: ThreadPoolExecutor):
        self.pool = pool
        self.pending: dict[Future, Callable[[Any], None]] = {}

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        self.pending[self.pool.submit(fn)] = on_done

    def run(self) -> None:
        try:
            while self.pending:
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    self.pending.pop(fut)(fut.result())
        finally:
            for fut in self.pending:
                fut.cancel()
            self.pending.clear()


class PagedList:
    """A collection read with ``$top``/``$skip`` up to ``ahead`` pages at a time, falling back to following
    ``nextLink`` when the service pages differently from what was asked.

    ``list_op(top=, skip=)`` must return an azure-core ``ItemPaged``.
    """

    def __init__(self, sched: Scheduler, list_op: Callable[..., Any], ahead: int,
                 on_complete: Callable[[list], None]):
        self.sched = sched
        self.list_op = list_op
        self.ahead = max(1, ahead)
        self.on_complete = on_complete
        self.pages: dict[int, list] = {}
        self.tails: dict[int, list] = {}  # skip of a page the service paged differently -> items after it
        self.size = 0
        self.next_skip = 0
        self.end: float = float("inf")  # skip of the last page
        self.in_flight = 0
        self.following = False

    def start(self) -> None:
        self._fetch_skip(0)

    def _fetch_skip(self, skip: int) -> None:
        self.in_flight += 1

        def fetch() -> tuple[list, str | None]:
            pages = self.list_op(top=PAGE_SIZE, skip=skip or None).by_page()
            items = list(next(pages))
            return items, pages.continuation_token

        self.sched.submit(fetch, lambda result: self._on_page(skip, result))

    def _fetch_link(self, origin: int, link: str) -> None:
        self.in_flight += 1

        def fetch() -> tuple[list, str | None]:
            pages = self.list_op().by_page(continuation_token=link)
            items = list(next(pages))
            return items, pages.continuation_token

        self.sched.submit(fetch, lambda result: self._on_link_page(origin, result))

    def _on_page(self, skip: int, result: tuple[list, str | None]) -> None:
        self.in_flight -= 1
        items, link = result
        self.pages[skip] = items
        if link is None:
            self.end = min(self.end, skip)
        elif skip == 0:
            self.size = len(items)
            if self.size == 0:  # an empty first page that still has a next link: just follow links
                self.end = 0
                self.following = True
                self._fetch_link(0, link)
            else:
                self.next_skip = self.size
                for _ in range(self.ahead):
                    self._schedule_next()
        elif len(items) != self.size and skip < self.end:
            # the service pages differently from what we asked: keep this page, follow its links from here
            self.end = skip
            self.following = True
            self._fetch_link(skip, link)
        else:
            self._schedule_next()
        self._maybe_done()

    def _schedule_next(self) -> None:
        if not self.following and self.next_skip <= self.end and self.size:
            skip = self.next_skip
            self.next_skip += self.size
            self._fetch_skip(skip)

    def _on_link_page(self, origin: int, result: tuple[list, str | None]) -> None:
        self.in_flight -= 1
        items, link = result
        self.tails.setdefault(origin, []).extend(items)
        if link is not None and origin == self.end:
            self._fetch_link(origin, link)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.in_flight == 0:
            out = [item for skip in sorted(self.pages) if skip <= self.end for item in self.pages[skip]]
            self.on_complete(out + self.tails.get(int(self.end), []))
