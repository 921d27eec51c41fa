"""Properties of the claim round's slot assignment (pure, in process): whatever the running
tasks and candidates, a round never hands out more slots than the limits allow, never gives
one slot twice, keeps claim order, and lets an expired holder keep its own slots."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support import reactor_spec

from runtime.claims import Claimer
from runtime.reactor import KeyConcurrency, ReactorSpec

KEYS = ["a", "b", "c"]


def _spec(cluster: int | None, per_key: int | None) -> ReactorSpec:
    key = KeyConcurrency("$k", per_key) if per_key is not None else None
    return reactor_spec(collection="src", cluster_concurrency=cluster, key_concurrency=key)


@st.composite
def _situations(draw: st.DrawFn) -> tuple[ReactorSpec, list[dict[str, Any]],
                                          list[dict[str, Any]], int]:
    cluster = draw(st.one_of(st.none(), st.integers(1, 4)))
    per_key = draw(st.one_of(st.none(), st.integers(1, 3)))
    if cluster is None and per_key is None:
        cluster = 2
    running: list[dict[str, Any]] = []
    used: set[str] = set()
    key_used: dict[str, int] = {}
    for i in range(draw(st.integers(0, 5))):
        doc: dict[str, Any] = {"_id": f"run{i}", "concurrencyKey": draw(st.sampled_from(KEYS))}
        if cluster is not None:
            free = [f"r#{j}" for j in range(cluster) if f"r#{j}" not in used]
            if not free:
                break
            doc["slot"] = free[0]
            used.add(free[0])
        if per_key is not None:
            n = key_used.get(doc["concurrencyKey"], 0)
            if n >= per_key:
                continue
            doc["keySlot"] = f"r#{doc['concurrencyKey']}#{n}"
            key_used[doc["concurrencyKey"]] = n + 1
        running.append(doc)
    candidates = [{"_id": f"c{i}", "concurrencyKey": draw(st.sampled_from(KEYS))}
                  for i in range(draw(st.integers(0, 8)))]
    # Some running tasks have expired leases: they are candidates again, holding their slots.
    expired = [dict(doc) for doc in running if draw(st.booleans())]
    return _spec(cluster, per_key), running, expired + candidates, draw(st.integers(1, 6))


@settings(max_examples=300, deadline=None)
@given(_situations())
def test_slot_assignment_respects_every_limit(
        situation: tuple[ReactorSpec, list[dict[str, Any]], list[dict[str, Any]], int]) -> None:
    spec, running, candidates, wanted = situation
    slots = Claimer._free_slots(spec, running)
    chosen, assigned = Claimer._assign(spec, candidates, wanted, slots)
    assert len(chosen) <= wanted
    order = [c["_id"] for c in candidates]
    positions = [order.index(c["_id"]) for c in chosen]
    assert positions == sorted(positions)  # claim order is kept
    reclaimed = {doc["_id"] for doc in running}
    holders: dict[str, Any] = {d["slot"]: d["_id"] for d in running if "slot" in d}
    key_holders: dict[str, Any] = {d["keySlot"]: d["_id"] for d in running if "keySlot" in d}
    for doc in chosen:
        fields = assigned[doc["_id"]]
        if doc["_id"] in reclaimed:  # an expired holder keeps exactly its own slots
            assert fields == {k: doc[k] for k in ("slot", "keySlot") if k in doc}
            continue
        if spec.policies.cluster_concurrency is not None:
            assert fields["slot"] not in holders, "a slot handed out twice"
            assert int(fields["slot"].split("#")[1]) < spec.policies.cluster_concurrency
            holders[fields["slot"]] = doc["_id"]
        if spec.policies.key_concurrency is not None:
            key_slot = fields["keySlot"]
            assert key_slot not in key_holders, "a key slot handed out twice"
            _, key, index = key_slot.split("#")
            assert key == doc["concurrencyKey"]
            assert int(index) < spec.policies.key_concurrency.max
            key_holders[key_slot] = doc["_id"]
