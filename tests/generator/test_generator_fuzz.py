"""Property tests of the generator with mutated definitions (issue 10's definitions fuzzer, in
the normal suite: bounded and derandomized). A build either succeeds, with output that
compiles and stays inside its folder, or reports problems; it never raises anything else.
The long-run version is ``bench/fuzz_definitions.py``."""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path

import pytest
from definition_fuzzing import HOSTILE_VALUES, Outcome, Seed, mutate, run_case, seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SEEDS = seeds()
FUZZ_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])
GOOD = (Outcome.BUILT, Outcome.PROBLEMS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache shared by the examples (most mutations keep the document schema)."""
    return tmp_path_factory.mktemp("fuzz-model-cache")


def check(seed: Seed, text: str, cache_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome, detail = run_case(seed, text, Path(tmp), cache_dir)
    assert outcome in GOOD, f"{outcome.value} for {seed.rel}:\n{text[:2000]}\n{detail}"


def test_the_seeds_are_many_and_build(cache_dir: Path) -> None:
    assert len(SEEDS) >= 30
    seed = next(s for s in SEEDS if s.rel.endswith("sync_paid_orders.reactor.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        assert run_case(seed, seed.text, Path(tmp), cache_dir)[0] is Outcome.BUILT


@FUZZ_SETTINGS
@given(seed=st.sampled_from(SEEDS), rng_seed=st.integers(0, 2**32 - 1))
def test_mutated_definitions_build_or_report_problems(seed: Seed, rng_seed: int,
                                                      cache_dir: Path) -> None:
    check(seed, mutate(seed, random.Random(rng_seed)), cache_dir)


@FUZZ_SETTINGS
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_hostile_values_anywhere_build_or_report_problems(seed: Seed, data: st.DataObject,
                                                          cache_dir: Path) -> None:
    import yaml
    from definition_fuzzing import _paths, dump, replace_value

    document = yaml.safe_load(seed.text)
    path = data.draw(st.sampled_from(_paths(document)), label="path")
    value = data.draw(st.sampled_from(HOSTILE_VALUES), label="value")
    value = copy.deepcopy(value)
    text = dump(replace_value(document, path, value), seed.rel.endswith(".json"))
    check(seed, text, cache_dir)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.sampled_from(SEEDS), junk=st.text(max_size=40), at=st.integers(0, 10_000))
def test_arbitrary_text_inserted_anywhere_is_handled(seed: Seed, junk: str, at: int,
                                                     cache_dir: Path) -> None:
    text = seed.text
    position = at % (len(text) + 1)
    check(seed, text[:position] + junk + text[position:], cache_dir)
