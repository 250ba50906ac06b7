"""The plan-file fuzzer: hypothesis mutates the bad-plan corpus (tests/corpus/) and the shipped plans (plans/),
and builds plans from their pieces, and checks every input ends in located diagnostics or a valid plan.

The oracle (``check``), for every input:

- ``load_plans`` returns (it never raises: an exception here is apimon's "unexpected error"), within
  ``PER_INPUT_SECONDS`` (SIGALRM: a hang fails the input instead of stalling the run);
- an invalid plan has at least one error, and every diagnostic is one line, ``FILE:LINE:COL`` with line and
  column >= 1, of bounded length (a 16 MiB value is never echoed);
- no message shows a value from the environment (``ENV``), in any rendering, not even its first 8 characters;
- a valid plan can be invoiced: every product prices 0, 1, a million and the largest count (2**63 - 1)
  without an exception, so ``validate`` and ``invoice`` agree on what is computable.

Used by tests/planfile/test_fuzz.py (a short derandomized run in ``make test``, a long random one under
``make fuzz``). A failing input is written to ``$APIMON_FUZZ_CRASHES`` (default: the test's tmp dir): fix the
bug and keep the input as a corpus case (tests/corpus/NNN-name.yaml + .expected).
"""

from __future__ import annotations

import copy
import random
import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
PER_INPUT_SECONDS = 5.0
MAX_COUNT = 2**63 - 1  # the largest billable quantity (billing.currency.MAX_COUNT)
MAX_MESSAGE_CHARS = 2000

# the environment the plans are loaded with: what the shipped plans and the corpus read, and a secret with
# the characters that escape differently in JSON
ENV = {
    "APIMON_CORPUS_SHORT_KEY": "Kx9-tiny-key",
    "FUZZ_KEY": "fz-key-0123456789abcdef",
    "FUZZ_SECRET": 'sé\\cr"et-value',
    "AZURE_SUBSCRIPTION_ID": "5ub5cr1pt10n-fuzz-id",
}


def _secret_forms() -> set[str]:
    from apimon_cli.render.output import renderings

    forms = set()
    for value in ENV.values():
        forms |= renderings(value)
        forms |= renderings(value[:8])  # the start of one, cut short in a message
    return forms


_SECRET_FORMS = _secret_forms()


def _seeds() -> list[tuple[str, str]]:
    found = []
    for path in sorted([*CORPUS.glob("*.yaml"), *CORPUS.glob("*/*.yaml"), *(ROOT / "plans").glob("*.yaml")]):
        try:
            found.append((path.name, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:  # pragma: no cover - the corpus is UTF-8 text
            continue
    return found


SEEDS = _seeds()
# the shipped plans are valid: mutating them reaches the deeper checks, so they are picked more often
VALID_SEEDS = [s for s in SEEDS if s[0] in {p.name for p in (ROOT / "plans").glob("*.yaml")}]


def _data(text: str) -> object:
    try:
        data = yaml.safe_load(text)
        yaml.safe_dump(data)  # (a 5,000-digit hex number loads, but cannot be written back)
        return data
    except Exception:
        return None


# trees of the seeds without anchors (an alias makes a shared or recursive structure: the bombs stay text)
TREES = [(name, d) for name, text in SEEDS if "&" not in text and isinstance(d := _data(text), dict)]

# YAML-significant pieces spliced into the text
TOKENS = [
    ":", ": ", "- ", "{", "}", "[", "]", ",", "&a ", "*a", "*b", "<<: *a", "!!bool ", "!!int ", "!!float ",
    "!!timestamp ", "!!str ", "!!null ", "!!binary ", "!!set ", "!!omap ", "!!map ", "!!seq ", "!!merge ",
    "!!python/object/apply:os.system ", "!!python/name:os.system ", "!custom ", "! ", "!<tag:x> ", "%TAG ! x\n",
    "---\n", "...\n", "? ", "|\n  ", ">-\n  ", "'", '"', "#", "\t", "\n", "\n  ", "\\", "${env:FUZZ_KEY}",
    "${env:FUZZ_SECRET}", "${env:UNSET}", "${env:", "${", "9" * 5000, "1" * 41, "9223372036854775808",
    "0x" + "f" * 50, "1.0e+999999999", "1e-400", "-1", "0", ".inf", "-.inf", ".nan", "1_000", "1:30:00",
    "0o17", "0b101", "2026-13-45", "2026-01-01T00:00:00Z", '"' + "9" * 99 + '"', '"0.0000000000001"',
    '"1e5"', "yes", "no", "~", "null", "é", "\u202e", "\ufeff", "\x85", "\u2028", "\x7f",
]
FIELDS = [
    "apimon", "target", "billing", "events", "products", "subscribers", "display_name", "description", "apis",
    "pricing", "model", "fee", "setup_fee", "included", "unit_price", "package", "size", "price", "round",
    "tiers", "up_to", "flat_fee", "minimum", "maximum", "rate_limit", "rate", "burst", "quota", "limit",
    "period", "max_concurrent", "public", "product", "email", "enabled", "key", "from_env", "metadata",
    "provider", "local", "aws", "azure", "apigee", "currency", "metric", "push", "webhook", "kafka", "<<",
]


# hypothesis draws one integer per input; the input is made from it with a random.Random: one draw instead of
# dozens keeps the run at hundreds of inputs per second, and the same seed gives the same input (derandomized
# runs repeat exactly; a failure prints its seed: make_inputs(seed) rebuilds it).
_CHARS = list(":-{}[],&*!|>'\"#%@`?<~. \n\t\\$") + ["é", "0", "9", "a"]
_EDGE_PYTHON = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 10**15, 10**15 - 1, 10**40, -(10**30), "9" * 99,
    "999999999999999.999999999999", "0.0000000000001", "1e5", " 29.00 ", "-0", "inf", float("inf"),
    float("-inf"), float("nan"), 1e308, 1.5, 5e-324, "", "${env:FUZZ_KEY}", "${env:FUZZ_SECRET}",
    "${env:UNSET}", "free", "per_unit", "graduated", "volume", "stairstep", "package", "flat", "local", "aws",
    "azure", "apigee", "USD", "JPY", "XAU", "usd", "month", "week", "day", "up", "down", [], {}, ["orders"],
    {"from_env": "FUZZ_KEY"}, {"from_env": "UNSET"}, {"up_to": "inf", "unit_price": "0.001"},
    [{"up_to": 10, "unit_price": "1"}, {"up_to": "inf"}], {"size": 1000, "price": "1.00"},
    {"rate": 10, "burst": 20}, {"limit": 1000, "period": "day"}, "a@b.example", "x" * 300, "\u202e\x85",
    "https://evil.example", "https://x:99999999999999999999/", "https://x:" + "9" * 5000, "http://[::1",
    "http://u:p@127.0.0.1:1/", "https://%zz/", "localhost:9092,[::1]:0", "whsec_AAAA", "\\\\host\\share",
]


def _edge_value(rnd: random.Random) -> object:
    pick = rnd.random()
    if pick < 0.7:
        return copy.deepcopy(rnd.choice(_EDGE_PYTHON))  # the sampled lists and mappings are shared
    if pick < 0.8:
        return rnd.randint(-(10**45), 10**45) if rnd.random() < 0.2 else rnd.randint(-3, 10**7)
    if pick < 0.9:
        return "".join(rnd.choice(_CHARS) for _ in range(rnd.randint(0, 10)))
    return rnd.uniform(-1e6, 1e6)


def text_mutation(rnd: random.Random, text: str) -> str:
    """One change to the text: splice a token or random characters, delete or repeat a span, move a line."""
    kind = rnd.choice(["token", "token", "chars", "delete", "repeat", "line", "indent", "value", "value"])
    i = rnd.randint(0, len(text))
    if kind == "token":
        return text[:i] + rnd.choice(TOKENS) + text[i:]
    if kind == "chars":
        return text[:i] + "".join(rnd.choice(_CHARS) for _ in range(rnd.randint(1, 6))) + text[i:]
    if kind in ("delete", "repeat"):
        n = rnd.randint(1, 40)
        return text[:i] + text[i + n:] if kind == "delete" else text[:i] + text[i:i + n] * 2 + text[i + n:]
    lines = text.split("\n")
    j = rnd.randrange(len(lines))
    if kind == "line":
        line = lines.pop(j) if rnd.random() < 0.5 else lines[j]
        lines.insert(rnd.randint(0, len(lines)), line)
    elif kind == "indent":
        lines[j] = " " * rnd.randint(0, 8) + lines[j].lstrip(" ")
    else:  # replace the value after a key with a token
        candidates = [k for k, line in enumerate(lines) if _KEY_VALUE.match(line)]
        if candidates:
            j = rnd.choice(candidates)
            lines[j] = _KEY_VALUE.match(lines[j]).group(1) + rnd.choice(TOKENS)
    return "\n".join(lines)


_KEY_VALUE = re.compile(r"^(\s*(?:- )?[^:#\s][^:#]*:\s)(.*)$")


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def tree_mutation(rnd: random.Random, tree: object) -> str:
    """A plan as data, with values replaced, keys removed or added, then dumped to YAML."""
    tree = copy.deepcopy(tree)
    for _ in range(rnd.randint(1, 4)):
        path = rnd.choice(_paths(tree))
        if not path:
            continue
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        action = rnd.choice(["replace", "replace", "delete", "add"])
        if action == "replace":
            parent[path[-1]] = _edge_value(rnd)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][rnd.choice(FIELDS)] = _edge_value(rnd)
    return yaml.dump(tree, Dumper=_Dumper, allow_unicode=rnd.random() < 0.5, sort_keys=False, width=10**6)


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def make_input(rnd: random.Random) -> str:
    """One plan file: a mutated seed text (most often), a mutated tree, or random characters."""
    source = rnd.choice(["seed", "seed", "valid", "valid", "tree", "tree", "random"])
    if source == "random":
        return "".join(rnd.choice(_CHARS) if rnd.random() < 0.7 else chr(rnd.randint(1, 0x2FFF))
                       for _ in range(rnd.randint(0, 200)))
    changes = rnd.randint(1, 5)
    if source == "tree":
        text = tree_mutation(rnd, rnd.choice(TREES)[1])
        changes -= 1
    else:
        text = rnd.choice(VALID_SEEDS if source == "valid" else SEEDS)[1]
    for _ in range(changes):
        text = text_mutation(rnd, text)
    return text


def make_inputs(seed: int) -> tuple[list[str], bool]:
    """The plan files of one run (one, or two that merge) and ``--strict``, all from ``seed``."""
    rnd = random.Random(seed)
    texts = [make_input(rnd) for _ in range(1 if rnd.random() < 0.75 else 2)]
    return texts, rnd.random() < 0.3


# hypothesis supplies the seeds (one draw an input: its engine costs milliseconds per drawn value)
SEEDS_STRATEGY = st.integers(min_value=0, max_value=2**64 - 1)


class Stats:
    inputs = 0
    seconds = 0.0


class FuzzHang(Exception):
    pass


@contextmanager
def time_bound(seconds: float):
    def on_alarm(signum, frame):
        raise FuzzHang(f"one input took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check(texts: list[str], workdir: Path, *, strict: bool = False, crashes: Path | None = None, load=None) -> None:
    """Load ``texts`` as plan files (several merge); raise AssertionError with the input kept on any defect.
    ``load`` is ``load_plans`` (another function only to show the oracle fails)."""
    from apimon_cli.billing.pricing import charge_lines
    from apimon_cli.planfile.loader import load_plans

    load = load or load_plans
    paths = []
    for i, text in enumerate(texts):
        p = workdir / f"fuzz{i}.yaml"
        p.unlink(missing_ok=True)  # a new file: rewriting one in place makes ext4 flush it (5 ms an input)
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        paths.append(str(p))
    start = time.perf_counter()
    try:
        with time_bound(PER_INPUT_SECONDS):
            loaded = load(paths, strict=strict, env=dict(ENV))
            problems = []
            if loaded.desired is None and not loaded.errors:
                problems.append("not valid, yet no error")
            for d in loaded.diagnostics:
                text = str(d)
                if d.line < 1 or d.col < 1 or "\n" in text or "\r" in text or len(text) > MAX_MESSAGE_CHARS:
                    problems.append(f"malformed diagnostic: {text[:300]!r}")
                if d.file not in paths:
                    problems.append(f"diagnostic names no input file: {text[:300]!r}")
                if any(form in text for form in _SECRET_FORMS):
                    problems.append(f"a value from the environment shows in a message: {text[:300]!r}")
            if loaded.desired is not None:
                currency = loaded.desired.billing.currency
                for product in loaded.desired.products.values():
                    for quantity in (0, 1, 10**6, MAX_COUNT):
                        charge_lines(product.pricing, quantity, currency, first_period=True)
    except Exception as exc:
        problems = [f"{type(exc).__name__}: {str(exc)[:500]}"]
    finally:
        Stats.inputs += 1
        Stats.seconds += time.perf_counter() - start
    if problems:
        kept = crashes or workdir
        kept.mkdir(parents=True, exist_ok=True)
        names = []
        for i, text in enumerate(texts):
            out = kept / f"crash-{Stats.inputs}-{i}.yaml"
            out.write_bytes(text.encode("utf-8", "surrogatepass"))
            names.append(str(out))
        raise AssertionError(f"{'; '.join(problems)} (input kept in {', '.join(names)}; strict={strict})")
