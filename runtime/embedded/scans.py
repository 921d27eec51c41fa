"""Long reads that let other clients in: a scan runs in slices and yields the event loop between.

Every command runs on the server's one event loop, so a read that examines a million documents
would hold up every other client (the runtime's claims included) for seconds. A :class:`Scan`
reads instead in slices of about :data:`SLICE_SECONDS` and awaits the loop between two slices,
as mongod yields a long query every so often. A read that ends inside its first slice (claims,
point queries, anything over a small collection) never yields and costs what it did before.

What a scan reads across its yields (and across the ``getMore`` calls of its cursor):

* a collection scan reads the ``_id`` keys the plan listed when the read started (the plan
  copies them), and fetches each document by key when it gets to it: concurrent inserts are
  not seen, and an iteration never breaks when writers change the collection;
* an index scan reads a frozen copy of the index: before the scan first yields, the index is
  given a fresh copy of its entries for the writers to change (:func:`_detach`), so the
  entries the suspended scan holds are never touched again. Each entry is read once;
* documents are stored as immutable dictionaries, replaced on every write. A document is read
  when the scan reaches it, at its latest committed version, and the filter is checked on that
  version. So each document is returned at most once, documents that no write touched during
  the read are all returned, and each returned document is one committed version that matches
  the filter. (``readConcern: snapshot`` reads one point in time throughout; see
  :mod:`runtime.embedded.versions`.)

A sort that no index gives (``find``, given the sort key) is done slice by slice too: each
slice's matches are sorted (only the first ``skip + limit`` kept), and the sorted runs are
merged, again in slices, once the candidates are all read. :func:`pipeline` runs an aggregation:
the per-document stages after the leading ``$match`` run on each slice, and a counting stage
(``$count``, or the ``$group`` that drivers' ``count_documents`` sends) counts as the slices
pass; blocking stages (``$group``, ``$sort``, ...) then run in one go on what is left.

Only reads yield. Writes (updates, deletes, ``findAndModify``, ``$out``/``$merge`` writes) run
without awaiting from their first read to their last write, so nothing can interleave with a
command's write unit.

``maxTimeMS`` keeps counting while a scan waits for the loop (as on mongod): the deadline is
checked after each yield, and by the scan itself as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import bson
from sortedcontainers import SortedList

from runtime.embedded import deadlines, engine, planner
from runtime.embedded.access import Access
from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.datastore import DataStore
from runtime.embedded.indexes import Index
from runtime.embedded.storage import Collection
from runtime.embedded.wire import CODEC

#: How long one slice of a scan runs before the scan yields the event loop.
SLICE_SECONDS = 0.002
#: How many candidate documents pass between two looks at the clock.
CHECK_EVERY = 64
#: Collections with at most this many documents are read in one go (no slicing at all).
SMALL_COLLECTION = 1000
#: Event-loop turns a scan gives up between two slices (see ``Scan._pause``).
YIELDS = 3

Matching = Callable[..., Iterator[dict[str, Any]]]


def sliced(coll: Collection | None) -> bool:
    """Whether a read of ``coll`` may run long enough to be read in slices."""
    return coll is not None and len(coll.docs) > SMALL_COLLECTION


def _detach(index: Index) -> None:
    """Give ``index`` a private copy of its entries, leaving the old list to the scans that hold
    it: no writer changes that list again. Copies the sorted list's sublists directly (a
    pointer copy, a few milliseconds per million entries) rather than re-sorting them."""
    old = index.entries
    state = vars(old)
    fresh: SortedList[tuple[Any, ...]] = SortedList()
    vars(fresh).update(_lists=[part[:] for part in state["_lists"]],
                       _maxes=list(state["_maxes"]), _len=state["_len"], _load=state["_load"],
                       _index=[], _offset=0)
    index.entries = fresh


class _Slices:
    """The :class:`~runtime.embedded.access.Access` a scan's ``matching`` reads through: it
    hands out the same candidates slice by slice (each call of :meth:`candidates` continues
    where the last slice stopped)."""

    def __init__(self, access: Access) -> None:
        self._access = access
        self.store: DataStore = access.store
        self._docs: Iterator[dict[str, Any]] | None = None
        self._ordered = False
        self.cut = False  # the last slice stopped before the candidates ran out
        self.examined = 0  # slices that handed out candidates since the last reset
        self.whole = False  # an in-memory sort: every candidate was handed out at once
        self.sorts_runs = False  # the scan sorts each slice itself and merges the runs
        self.unsorted = False  # the candidates are not in sort order (the scan sorts them)
        #: The context the plan was made in (its collation scope), to plan again in it.
        self.planned_in: contextvars.Context | None = None

    def collection(self, db: str, name: str) -> Collection | None:
        """An existing collection."""
        return self._access.collection(db, name)

    def ensure(self, db: str, name: str) -> Collection:
        """A collection, created implicitly when missing."""
        return self._access.ensure(db, name)

    def candidates(self, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None) -> tuple[Iterator[dict[str, Any]], bool]:
        """The next slice of the candidates (all of them when they need an in-memory sort)."""
        if self._docs is None:
            docs, ordered = self._access.candidates(coll, query, sort)
            self.planned_in = contextvars.copy_context()
            if sort and not ordered:
                if not self.sorts_runs:
                    self.whole = True
                    self._docs = iter(())
                    return docs, ordered
                # matching() is told they are in order (so it does not sort): the scan sorts
                # each slice's matches and merges the sorted runs
                self.unsorted, ordered = True, True
            self._docs, self._ordered = docs, ordered
        return self._slice(self._docs), self._ordered

    def close(self) -> None:
        """Drop the candidates (the read is over)."""
        self._docs = iter(())
        self.cut = False

    def _slice(self, docs: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.cut = False
        clock = time.perf_counter
        until = clock() + SLICE_SECONDS
        first = next(docs, None)  # (documents are never None)
        if first is None:
            return
        self.examined += 1  # the plan has started reading (all freeze() needs to know)
        yield first
        countdown = CHECK_EVERY
        for doc in docs:
            yield doc
            countdown -= 1
            if not countdown:
                if clock() >= until:
                    self.cut = True
                    return
                countdown = CHECK_EVERY

    def insert(self, coll: Collection, doc: dict[str, Any]) -> None:
        """Insert a document."""
        self._access.insert(coll, doc)

    def replace(self, coll: Collection, old: dict[str, Any], new: dict[str, Any],
                is_replacement: bool) -> None:
        """Store ``new`` in place of ``old``."""
        self._access.replace(coll, old, new, is_replacement)

    def delete(self, coll: Collection, doc: dict[str, Any]) -> None:
        """Delete a document."""
        self._access.delete(coll, doc)


class Scan:
    """The results of one read (filter, sort, skip, limit, projection) over a collection,
    computed a slice at a time by the ``async`` methods, which yield the loop between slices.

    ``matching`` is :func:`runtime.embedded.commands.crud.matching` (passed in: that module
    imports this one).
    """

    def __init__(self, ctx: CommandContext, coll: Collection, query: dict[str, Any],
                 sort: list[tuple[str, int]] | None, skip: int, limit: int | None,
                 projection: dict[str, Any] | None, matching: Matching,
                 sort_key: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self._slices = _Slices(ctx.access)
        self._slices.sorts_runs = sort_key is not None
        self._ctx = replace(ctx, access=self._slices)
        self._coll = coll
        self._query = query
        self._sort = sort
        self._sort_key = sort_key
        self._skip = skip
        self._left = limit  # results still to return (None: no limit)
        self._projection = projection
        self._matching = matching
        self._results: Iterator[dict[str, Any]] | None = None
        self._runs: list[list[dict[str, Any]]] = []  # sorted slices (candidates out of order)
        self._merged: Iterator[dict[str, Any]] | None = None  # the runs merged, once all read
        self._merge_cut = False
        self._keys_read = planner.QUERY_EXECUTOR["scanned"]
        self._frozen = False
        self.exhausted = False
        self.busy = False  # a getMore is using the scan (possibly waiting for the loop)

    def _limited(self, matched: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``matched`` after skip, limit and projection (the counts carry over slices)."""
        projection, variables, query = self._projection, self._ctx.variables, self._query
        while self._left != 0:
            doc = next(matched, None)
            if doc is None:
                return
            if self._skip:
                self._skip -= 1
                continue
            if self._left is not None:
                self._left -= 1
            yield engine.project(doc, projection, variables, query) if projection else doc

    def _slice_results(self) -> Iterator[dict[str, Any]]:
        """Results from the next slice of candidates (a fresh ``matching`` per slice); none
        while the slices are sorted into runs."""
        hint = self._skip + self._left if self._left else None
        matched = self._matching(self._ctx, self._coll, self._query, self._sort, hint)
        if not self._slices.unsorted:
            if not self._skip and self._left is None and not self._projection:
                return matched  # nothing to count or change on the way
            return self._limited(matched)
        key = self._sort_key
        assert key is not None
        self._runs.append(heapq.nsmallest(hint, matched, key=key) if hint
                          else sorted(matched, key=key))
        return iter(())

    def _merge_slice(self, merged: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The next slice of the merged runs' results."""
        self._merge_cut = False
        clock = time.perf_counter
        until = clock() + SLICE_SECONDS
        for count, doc in enumerate(merged, 1):
            yield doc
            if not count % CHECK_EVERY and clock() >= until:
                self._merge_cut = True
                return

    def _next_results(self) -> Iterator[dict[str, Any]]:
        if self._results is None:
            self._results = self._slice_results() if self._merged is None \
                else self._merge_slice(self._merged)
        return self._results

    def _slice_done(self) -> str:
        """After the current slice's results ran out: ``"done"`` if the read is over,
        ``"yield"`` to let others in before the next slice, ``"next"`` to go on at once."""
        self._results = None
        if self._left != 0:
            if self._merged is not None:
                if self._merge_cut:
                    return "yield"
            elif self._slices.cut:
                return "yield"
            elif self._slices.unsorted:
                key = self._sort_key
                assert key is not None
                self._merged = self._limited(heapq.merge(*self._runs, key=key))
                self._runs = []
                return "next"
        self.exhausted = True
        self.close()
        return "done"

    def close(self) -> None:
        """Let go of the scan's iterators. Their generators refer back to the scan: a scan
        dropped with them (a cursor closed early, an error) would otherwise wait for the cyclic
        garbage collector, which is slow on a large heap, and run it more often."""
        self._results = self._merged = None
        self._runs = []
        self._slices.close()

    def _resume(self) -> None:
        """Start a step that runs without yielding (the index-key counter is then this scan's
        alone until the next yield)."""
        self._keys_read = planner.QUERY_EXECUTOR["scanned"]
        self._slices.examined = 0

    async def _pause(self) -> None:
        self.freeze()
        # One sleep(0) would put the scan back at the head of the loop's queue, ahead of the
        # request that arrived meanwhile: the loop first runs the callback that reads it, which
        # only then queues the waiting client's task. After :data:`YIELDS` turns that task runs
        # before the scan's next slice, so another client waits for one slice at most.
        for _ in range(YIELDS):
            await asyncio.sleep(0)
        self._resume()
        deadlines.check()

    def freeze(self) -> None:
        """Make the scan safe to suspend: called before every yield (and before a cursor
        waits for its ``getMore``), it detaches the index an index scan reads (once)."""
        if self._frozen or self.exhausted or self._slices.whole:
            return
        if not self._slices.examined:
            return  # the plan has not started reading: decide once it has
        self._frozen = True
        if planner.QUERY_EXECUTOR["scanned"] == self._keys_read:
            return  # no index key read since the scan resumed: a collection scan
        planned_in = self._slices.planned_in
        if planned_in is None:
            return
        # The same plan again (same state, same collation scope): it names the index read.
        chosen = planned_in.run(planner.plan, self._coll, self._query, self._sort)
        if chosen.index is not None and chosen.index in self._coll.indexes:
            _detach(self._coll.indexes[chosen.index])

    async def take(self, want: int | None, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """Up to ``want`` results (all with None), and fewer than ``max_bytes`` of BSON (the
        result that crosses it is the last); :attr:`exhausted` tells whether more remain."""
        batch: list[dict[str, Any]] = []
        size = 0
        self._resume()
        try:
            while True:
                for doc in self._next_results():
                    batch.append(doc)
                    if max_bytes is not None:
                        size += len(bson.encode(doc, codec_options=CODEC))
                    if (want is not None and len(batch) >= want) or \
                            (max_bytes is not None and size > max_bytes):
                        if self._left == 0:
                            # the limit is reached: no cursor to keep open (as on mongod)
                            self.exhausted = True
                            self.close()
                        return batch
                step = self._slice_done()
                if step == "done":
                    return batch
                if step == "yield":
                    await self._pause()
        except BaseException:
            self.close()
            raise

    async def each_slice(self, consume: Callable[[list[dict[str, Any]]], None]) -> None:
        """Call ``consume`` with the results of each slice, in order, until none remain."""
        self._resume()
        try:
            while True:
                consume(list(self._next_results()))
                step = self._slice_done()
                if step == "done":
                    return
                if step == "yield":
                    await self._pause()
        except BaseException:
            self.close()
            raise

    async def count(self) -> int:
        """How many results remain (consumes them)."""
        total = [0]

        def add(results: list[dict[str, Any]]) -> None:
            total[0] += len(results)

        await self.each_slice(add)
        return total[0]

    async def each(self, consume: Callable[[dict[str, Any]], None]) -> None:
        """Call ``consume`` on every remaining result."""

        def each_of(results: list[dict[str, Any]]) -> None:
            for doc in results:
                consume(doc)

        await self.each_slice(each_of)


#: Stages that turn each document into zero or more documents on their own: a pipeline's run of
#: them right after its leading ``$match`` is applied to each slice of the scan.
_PER_DOCUMENT_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset",
                                  "$replaceRoot", "$replaceWith", "$unwind"})


def _counted_group(stage: dict[str, Any]) -> Callable[[int], list[dict[str, Any]]] | None:
    """For a stage that only counts its input (``$count``, or a ``$group`` on a constant
    ``_id`` whose accumulators are all ``{$sum: <integer>}``, which is what drivers'
    ``count_documents`` sends), the function from the input's size to the stage's output."""
    name, spec = next(iter(stage.items()))
    if name == "$count":
        if type(spec) is not str or not spec or spec.startswith("$") or "." in spec:
            return None  # invalid: the pipeline engine reports it
        return lambda n: [{spec: n}] if n else []
    if name != "$group" or not isinstance(spec, dict) or "_id" not in spec:
        return None
    group_id = spec["_id"]
    if not (group_id is None or isinstance(group_id, bool | int | float)
            or (type(group_id) is str and not group_id.startswith("$"))):
        return None
    sums: list[tuple[str, int]] = []
    for field, accumulator in spec.items():
        if field == "_id":
            continue
        if field.startswith("$") or "." in field or not isinstance(accumulator, dict) \
                or list(accumulator) != ["$sum"] or type(accumulator["$sum"]) is not int:
            return None
        sums.append((field, accumulator["$sum"]))
    return lambda n: [{"_id": group_id, **{f: n * c for f, c in sums}}] if n else []


async def pipeline(ctx: CommandContext, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None, stages: list[dict[str, Any]],
                   foreign: Any, matching: Matching) -> list[dict[str, Any]]:
    """An aggregation over ``coll``: the documents matching ``query`` (in ``sort`` order) run
    through ``stages``, read slice by slice. The per-document stages that follow the match run
    on each slice; a counting stage after them counts as the slices pass; what is left runs
    on the collected documents at the end (in one go: ``$group``, ``$sort`` and the other
    blocking stages need all their input)."""
    per_slice = 0
    while per_slice < len(stages) and next(iter(stages[per_slice])) in _PER_DOCUMENT_STAGES:
        per_slice += 1
    head, tail = stages[:per_slice], stages[per_slice:]
    counter = _counted_group(tail[0]) if tail else None
    variables = ctx.variables
    collected: list[dict[str, Any]] = []
    size = [0]

    def consume(results: list[dict[str, Any]]) -> None:
        if head:
            results = engine.run_pipeline(results, head, foreign, variables)
        if counter is not None:
            size[0] += len(results)
        else:
            collected.extend(results)

    await Scan(ctx, coll, query, sort, 0, None, None, matching).each_slice(consume)
    if counter is not None:
        collected, tail = counter(size[0]), tail[1:]
    return engine.run_pipeline(collected, tail, foreign, variables) if tail else collected
