"""The plan-file fuzzer (tests/planfile/fuzz_plans.py): no YAML input ends in an unexpected error or a hang.

``make test`` runs a short derandomized run (the same ``FUZZ_EXAMPLES`` inputs every time, about 30 s);
``make fuzz`` a long random one (``APIMON_FUZZ_EXAMPLES`` inputs, new ones every run). Both print the figure:
inputs tried and inputs per second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import fuzz_plans as F
import pytest
from hypothesis import HealthCheck, given, settings

LONG = bool(os.environ.get("APIMON_FUZZ_EXAMPLES"))
FUZZ_EXAMPLES = int(os.environ.get("APIMON_FUZZ_EXAMPLES") or 10_000)
CRASHES = Path(os.environ["APIMON_FUZZ_CRASHES"]) if os.environ.get("APIMON_FUZZ_CRASHES") else None


def test_fuzzer_seeds_cover_the_corpus_and_the_shipped_plans():
    names = {name for name, _ in F.SEEDS}
    assert {"aws.yaml", "azure.yaml", "apigee.yaml", "local.yaml"} <= {n for n, _ in F.VALID_SEEDS}
    assert len(names) >= 80 and "028-duplicate-key.yaml" in names
    assert len(F.TREES) >= 40


def test_the_oracle_fails_on_an_error_a_hang_and_a_huge_message(tmp_path: Path):
    from apimon_cli.planfile.diagnostics import Diagnostic
    from apimon_cli.planfile.loader import LoadedPlan

    def boom(*a, **k):
        raise KeyError("x")

    with pytest.raises(AssertionError, match=r"KeyError: 'x' \(input kept in .*crash-\d+-0.yaml"):
        F.check(["apimon: 1\n"], tmp_path, load=boom)
    with pytest.raises(AssertionError, match="FuzzHang: one input took more than 0.2 s"):
        bound, F.PER_INPUT_SECONDS = F.PER_INPUT_SECONDS, 0.2
        try:
            F.check(["apimon: 1\n"], tmp_path, load=lambda *a, **k: time.sleep(3))
        finally:
            F.PER_INPUT_SECONDS = bound

    def echo(paths, **k):
        return LoadedPlan(None, [Diagnostic(paths[0], 1, 1, "error", "x", "9" * 5000)])

    with pytest.raises(AssertionError, match="malformed diagnostic"):
        F.check(["apimon: 1\n"], tmp_path, load=echo)


def test_no_plan_file_ends_in_an_unexpected_error_or_a_hang(tmp_path: Path):
    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=not LONG,  # the short run tries the same inputs every time: a failure is reproducible
        database=None,  # nothing written into the repository tree (the suite runs in parallel)
        deadline=None,  # the per-input bound is F.PER_INPUT_SECONDS (SIGALRM), robust on a loaded machine
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(seed=F.SEEDS_STRATEGY)
    def fuzz(seed: int):
        texts, strict = F.make_inputs(seed)
        F.check(texts, tmp_path, strict=strict, crashes=CRASHES)

    inputs, loading = F.Stats.inputs, F.Stats.seconds
    start = time.perf_counter()
    fuzz()
    wall = time.perf_counter() - start
    n, load = F.Stats.inputs - inputs, F.Stats.seconds - loading
    print(f"\nfuzz: {n:,} inputs in {wall:.1f} s ({n / wall:,.0f} inputs/s; loading and checking them "
          f"{load:.1f} s, {n / load:,.0f} inputs/s)")
    assert n >= FUZZ_EXAMPLES * 0.9
