"""The claim protocol: how an instance takes due tasks of one reactor, in rounds.

A *claim round* asks for up to ``wanted`` tasks (free worker slots, capped by the adaptive
batch size). Without limits and with a batch of one it is a single ``findAndModify`` (as
fast as it gets at low load). Otherwise:

1. with cluster-wide or per-key concurrency: one ``find`` of the reactor's running tasks
   (index ``reactgen_status``) tells which slots are taken and which keys are full;
2. one ``find`` of due candidates in claim order (index-served, full keys excluded);
3. with a rate limit: one atomic take of tokens from the reactor's bucket
   (:mod:`runtime.rate_limit`);
4. one unordered bulk write of per-task compare-and-set claims
   (:meth:`runtime.task_store.TaskStore.claim_candidates`), each with its own claim id and
   the slots assigned to it; a slot taken concurrently fails on its unique index.

Order: due time, or ``priority`` first for reactors with priorities; every fourth round of
such a reactor gives its first place to the oldest due task whatever its priority, so no
priority starves. The batch size doubles after every round that got all it asked for and
falls back to one after a round that found fewer due tasks, so a lone task is claimed with
one command and a backlog with two or three per batch; a round that lost candidates to another
instance keeps its size and starts its next round at a random place among the first
``2 x wanted`` candidates, so instances stop chasing the same head of the queue.
docs/architecture.md ("Claims", "Flow control") explains why each step stays correct when
instances crash.
"""

from __future__ import annotations

import datetime
import random
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runtime.rate_limit import RateLimiter
from runtime.reactor import ReactorSpec
from runtime.task_store import DUE_ORDER, PRIORITY_ORDER, RUNNING, Claimed, TaskStore


class FlowLimit(StrEnum):
    """What held a claim round back although due work existed."""

    CONCURRENCY = "concurrency"
    """Every cluster-wide or per-key concurrency slot it could take was held."""
    RATE = "rate"
    """The reactor's rate-limit bucket was empty."""


MAX_BATCH = 64
FAIRNESS_EVERY = 4
"""Every this many claim rounds of a reactor with priorities, the oldest due task goes first."""
KEY_LOOKAHEAD = 4
"""Per-key limits skip candidates whose key is full: read this many times more candidates."""


@dataclass
class RoundResult:
    """What one claim round got and what it learnt."""

    claimed: list[Claimed]
    wanted: int
    exhausted: bool = False
    """Fewer due tasks than wanted were found: nothing more is due now."""
    blocked: bool = False
    """Due work exists but every concurrency slot it could take is held: wait for a finish."""
    retry_after_ms: int = 0
    """The rate limit's bucket is empty: try again after this long."""
    contended: bool = False
    """Some candidates were claimed by another instance first: more work may be due."""


def has_priority(reactor: ReactorSpec) -> bool:
    """Whether the reactor's tasks are claimed in priority order."""
    policy = reactor.policies.priority
    return bool(policy.static) or policy.expression is not None


def is_limited(reactor: ReactorSpec) -> bool:
    """Whether claims must respect cluster-wide concurrency slots."""
    policies = reactor.policies
    return policies.cluster_concurrency is not None or policies.key_concurrency is not None


@dataclass
class _Slots:
    """Free concurrency slots of one reactor, from its running tasks."""

    free: list[str] = field(default_factory=list)
    key_counts: Counter[str] = field(default_factory=Counter)
    key_taken: set[str] = field(default_factory=set)


class Claimer:
    """Runs claim rounds for the reactors of one instance."""

    def __init__(self, reactors: dict[str, ReactorSpec], stores: dict[str, TaskStore],
                 limiter: RateLimiter | None) -> None:
        self.reactors = reactors
        self.stores = stores
        self.limiter = limiter
        self.batch: Counter[str] = Counter()
        self.rounds: Counter[str] = Counter()
        self.contended: dict[str, bool] = {}

    def batch_size(self, name: str) -> int:
        """How many tasks the next round of ``name`` may ask for (adaptive, at least 1)."""
        return max(1, self.batch[name])

    async def claim(self, name: str, now: datetime.datetime, wanted: int) -> RoundResult:
        """One claim round for up to ``wanted`` tasks of reactor ``name``."""
        reactor, store = self.reactors[name], self.stores[name]
        self.rounds[name] += 1
        order = PRIORITY_ORDER if has_priority(reactor) else DUE_ORDER
        fairness = has_priority(reactor) and self.rounds[name] % FAIRNESS_EVERY == 0
        limited = is_limited(reactor)
        rate = reactor.policies.rate_limit
        if wanted == 1 and not limited and rate is None:
            held = await store.claim(name, now, DUE_ORDER if fairness else order)
            result = RoundResult([held] if held else [], 1, exhausted=held is None)
        else:
            result = await self._batch_round(reactor, store, now, wanted, order, fairness)
        got = len(result.claimed)
        if got == wanted:
            self.batch[name] = min(MAX_BATCH, 2 * wanted)
        elif not result.contended:
            self.batch[name] = 1  # nothing more was due: back to single claims
        # Contended: keep the size; the next round starts at a random place instead.
        self.contended[name] = result.contended
        return result

    async def _batch_round(self, reactor: ReactorSpec, store: TaskStore,
                           now: datetime.datetime, wanted: int, order: Any,
                           fairness: bool) -> RoundResult:
        name = reactor.name
        policies = reactor.policies
        slots: _Slots | None = None
        exclude: dict[str, Any] | None = None
        limit = wanted
        reclaims_only = False
        if is_limited(reactor):
            slots = self._free_slots(reactor, await store.running(name))
            # A running task is due only when its lease expired (its worker died): it keeps
            # its slots, so it is always a candidate, even when every slot is taken.
            expired = {"status": {"$in": RUNNING}}
            key = policies.key_concurrency
            if policies.cluster_concurrency is not None and not slots.free:
                reclaims_only, exclude = True, expired
            elif key is not None:
                full = [k for k, n in slots.key_counts.items() if n >= key.max]
                if full:
                    exclude = {"$or": [{"concurrencyKey": {"$nin": full}}, expired]}
                limit = wanted * KEY_LOOKAHEAD
        spread = wanted if self.contended.get(name) and not fairness else 0
        candidates = await store.due_candidates(name, now, limit + spread, order, exclude)
        if spread and len(candidates) > wanted:
            # Another instance took the same head of the queue last time: start at a random
            # place among the first 2 x wanted, so the next rounds do not collide again.
            start = random.randrange(min(spread, len(candidates) - wanted) + 1)
            candidates = candidates[start:] + candidates[:start]
        if reclaims_only and not candidates:
            return RoundResult([], wanted, blocked=True)
        if fairness and candidates:
            oldest = await store.due_candidates(name, now, 1, DUE_ORDER, exclude)
            if oldest and all(c["_id"] != oldest[0]["_id"] for c in candidates):
                candidates = oldest + candidates
        exhausted = len(candidates) < limit + spread
        chosen, assigned = self._assign(reactor, candidates, wanted, slots)
        if not chosen:
            return RoundResult([], wanted, exhausted=exhausted or not candidates,
                               blocked=bool(candidates))
        retry_after = 0
        if policies.rate_limit is not None and self.limiter is not None:
            grant = await self.limiter.take(name, policies.rate_limit, len(chosen))
            chosen, retry_after = chosen[:grant.granted], grant.retry_after_ms
            if not chosen:
                return RoundResult([], wanted, retry_after_ms=retry_after)
        claimed = await store.claim_candidates(chosen, now, assigned)
        if policies.rate_limit is not None and self.limiter is not None:
            await self.limiter.give_back(name, policies.rate_limit, len(chosen) - len(claimed))
        return RoundResult(claimed, wanted, exhausted=exhausted, retry_after_ms=retry_after,
                           blocked=reclaims_only or len(chosen) < min(wanted, len(candidates)),
                           contended=len(claimed) < len(chosen))

    @staticmethod
    def _free_slots(reactor: ReactorSpec, running: list[dict[str, Any]]) -> _Slots:
        state = _Slots()
        policies = reactor.policies
        if policies.cluster_concurrency is not None:
            taken = {doc.get("slot") for doc in running}
            state.free = [s for s in (f"{reactor.name}#{i}"
                                      for i in range(policies.cluster_concurrency))
                          if s not in taken]
        for doc in running:
            if isinstance(doc.get("keySlot"), str):
                state.key_taken.add(doc["keySlot"])
                state.key_counts[str(doc.get("concurrencyKey"))] += 1
        return state

    @staticmethod
    def _assign(reactor: ReactorSpec, candidates: list[dict[str, Any]], wanted: int,
                slots: _Slots | None) -> tuple[list[dict[str, Any]], dict[Any, dict[str, Any]]]:
        """The candidates to claim, in order, with the slot fields each one takes.

        A candidate that already holds slots (its lease expired: its worker died) keeps them.
        """
        if slots is None:
            return candidates[:wanted], {}
        key = reactor.policies.key_concurrency
        chosen: list[dict[str, Any]] = []
        assigned: dict[Any, dict[str, Any]] = {}
        for doc in candidates:
            if len(chosen) >= wanted:
                break
            fields: dict[str, Any] = {}
            if reactor.policies.cluster_concurrency is not None:
                if isinstance(doc.get("slot"), str):
                    fields["slot"] = doc["slot"]
                elif slots.free:
                    fields["slot"] = slots.free[0]
                else:
                    break
            if key is not None:
                if isinstance(doc.get("keySlot"), str):
                    fields["keySlot"] = doc["keySlot"]
                else:
                    digest = str(doc.get("concurrencyKey"))
                    free = [s for s in (f"{reactor.name}#{digest}#{j}" for j in range(key.max))
                            if s not in slots.key_taken]
                    if not free:
                        continue
                    fields["keySlot"] = free[0]
                    slots.key_taken.add(free[0])
                    slots.key_counts[digest] += 1
            if fields.get("slot") in slots.free:
                slots.free.remove(fields["slot"])
            chosen.append(doc)
            assigned[doc["_id"]] = fields
        return chosen, assigned
