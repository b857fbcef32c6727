"""Mutation testing of the pure-logic modules against their fast tests (mutmut).

Run ``uv run python bench/mutation.py [--max-children N] [--keep]``. What is mutated and which
tests run is the ``[tool.mutmut]`` section of ``pyproject.toml`` (``only_mutate`` lists the
modules, ``pytest_add_cli_args_test_selection`` the fast test files, with ``-m "not slow"``: no
Temporal server, no processes). The script copies the project into ``bench/results/mutation/``
(git-ignored; mutmut writes its ``mutants/`` tree there, never in the work tree), runs
``mutmut run``, then prints per module the mutants, how many the tests killed, the score, every
survivor with its diff, and the survivors listed in :data:`EQUIVALENT` with why they cannot be
killed.

Score = (killed + timed out) / (mutants - equivalent), per module and overall. A timed-out
mutant made the tests hang, which pytest-timeout / mutmut's CPU limit turns into a failure, so
it counts as killed. The run exits 1 if the overall score is below :data:`TARGET` or a survivor
is neither killed nor listed as equivalent.

How mutmut (3.x) works, which bounds what this measures: it rewrites every function of the
listed modules into a trampoline that dispatches to the original or to one mutant (chosen by an
environment variable), records once which tests reach which function, and then runs, per
mutant, only those tests in a process forked from a warm one. It does not mutate code outside
functions (module constants and tables, class bodies, pydantic field definitions) nor functions
with decorators other than ``@staticmethod``/``@classmethod`` (``@property``, ``@lru_cache``,
pydantic validators, ``@activity.defn`` methods; the helpers they call are mutated). Tables
such as ``TRANSITIONS`` are pinned by table-driven tests (``tests/test_lifecycle_rules.py``).
Tests must not rely on state cached before they run (``parse_condition`` is memoised, so
``tests/test_analysis.py`` clears its cache per test), or a mutant is never reached.

Workflow code (``workflows/agent_lifecycle.py``, ``workflows/approval.py``) is not in the
fast subset: its tests need the time-skipping server, and each mutant would cost seconds. The
lifecycle's main-loop decisions are pinned by ``tests/test_lifecycle_behaviours.py``, whose
tests fail with each of the regressions the issue planted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "results" / "mutation"
TARGET = 0.85
"""Minimum overall score (killed / non-equivalent mutants)."""

_ASYNC_BOUND = (
    "asyncio.timeout() of the same seconds already bounds the whole request, so an httpx "
    "timeout of None changes nothing"
)
_HEADER_CASE = "HTTP header names are case-insensitive (RFC 9110 5.1; httpx.Headers too)"
_SAME_LENGTH = (
    "both scrape lists come from the same endpoints (gather keeps order and length), so zip "
    "never sees unequal lengths"
)
_URL_ONLY = "only loc and msg are read; include_url only adds a 'url' key"

EQUIVALENT: dict[str, tuple[str, str]] = {
    # mutant name: (text of the mutated line, why no test can tell it from the original)
    "activities.metrics.x_bucket_quantile__mutmut_47": (
        "buckets[0][0] < 0",
        "with a lowest bound of exactly 0, interpolating from 0 to 0 also answers 0",
    ),
    "activities.metrics.xǁMetricsActivitiesǁ_query__mutmut_13": ("timeout=None)", _ASYNC_BOUND),
    "activities.metrics.xǁMetricsActivitiesǁ_scrape_one__mutmut_12": (
        "timeout=None)",
        _ASYNC_BOUND,
    ),
    "activities.probes.xǁProbeActivitiesǁprobe_one__mutmut_10": ("timeout=None)", _ASYNC_BOUND),
    "activities.probes.xǁProbeActivitiesǁ_smoke__mutmut_11": ("timeout=None", _ASYNC_BOUND),
    "activities.metrics.xǁMetricsActivitiesǁ_scrape__mutmut_11": (
        ">= 0:",
        "at exactly 0 s left the extra round sleeps 0 s; the same scrapes follow",
    ),
    "activities.metrics.xǁMetricsActivitiesǁ_scrape__mutmut_32": ("strict=None", _SAME_LENGTH),
    "activities.metrics.xǁMetricsActivitiesǁ_scrape__mutmut_35": (
        "zip(after, before, )",
        _SAME_LENGTH,
    ),
    "activities.metrics.xǁMetricsActivitiesǁ_scrape__mutmut_36": ("strict=False", _SAME_LENGTH),
    "activities.notify.xǁNotifyActivitiesǁ_check__mutmut_10": ('get("retry-after")', _HEADER_CASE),
    "activities.notify.xǁNotifyActivitiesǁ_check__mutmut_11": ('get("RETRY-AFTER")', _HEADER_CASE),
    "activities.notify.xǁNotifyActivitiesǁ_post__mutmut_10": ('"idempotency-key"', _HEADER_CASE),
    "activities.notify.xǁNotifyActivitiesǁ_post__mutmut_11": ('"IDEMPOTENCY-KEY"', _HEADER_CASE),
    "activities.probes.x__in_flight__mutmut_13": (
        "value > 0",
        "the only value it changes is 0, which both versions return",
    ),
    "activities.probes.x__in_flight__mutmut_14": (
        "value >= 1",
        "the only value it changes is 0, which both versions return",
    ),
    "activities.probes.x_unanswered__mutmut_9": (
        "",
        "ProbeResult.in_flight defaults to 0: dropping in_flight=0 is the same",
    ),
    "fleetops.codec.x_generate_key__mutmut_6": (
        'decode("ASCII")',
        "codec names are case-insensitive: 'ASCII' is the 'ascii' codec",
    ),
    "fleetops.converter.x_describe_validation_error__mutmut_6": ("include_url=True", _URL_ONLY),
    "fleetops.converter.x__invalid__mutmut_3": ("include_url=True", _URL_ONLY),
}
"""Survivors that behave exactly like the original. The text guards against a renumbering:
an entry whose mutated line no longer matches is ignored (and reported as stale)."""

KILLED = {"killed", "timeout"}


def _copy_project(config: dict[str, object]) -> None:
    """A fresh copy of what mutmut needs: the source packages, tests, also_copy, pyproject."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    names = [*config.get("source_paths", []), *config.get("also_copy", []), "tests"]  # type: ignore[misc]
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    for name in dict.fromkeys(str(n).rstrip("/") for n in names):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, WORK / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, WORK / name)
    shutil.copy2(ROOT / "pyproject.toml", WORK / "pyproject.toml")


def _mutmut(*args: str, capture: bool = True) -> str:
    binary = Path(sys.executable).parent / "mutmut"
    done = subprocess.run(
        [str(binary), *args], cwd=WORK, text=True, capture_output=capture, check=False
    )
    if done.returncode != 0:
        if capture:
            sys.stdout.write(done.stdout + done.stderr)
        raise SystemExit(f"mutmut {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout if capture else ""


_COLLECT = """
import json, sys
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files
out = {}
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for name, code in m.exit_code_by_key.items():
        status = status_by_exit_code[code]
        diff = "" if status in ("killed", "timeout") else get_diff_for_mutant(name, path=path)
        out[name] = [status, diff]
json.dump(out, sys.stdout)
"""


def _results() -> dict[str, tuple[str, str]]:
    """Mutant name -> (status, diff); the diff only for mutants not killed."""
    done = subprocess.run(
        [sys.executable, "-c", _COLLECT], cwd=WORK, text=True, capture_output=True, check=True
    )
    return {name: (status, diff) for name, (status, diff) in json.loads(done.stdout).items()}


def _module_of(name: str, modules: list[str]) -> str:
    for module in modules:
        dotted = module.removesuffix(".py").replace("/", ".")
        if name.startswith(dotted + "."):
            return module
    return "?"


def _mutated_lines(diff: str) -> str:
    return "\n".join(
        line[1:].strip() for line in diff.splitlines() if line.startswith("+") and line[1:2] != "+"
    )


def main() -> int:
    """Run the mutation test and print the report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    parser.add_argument("--keep", action="store_true", help="reuse the previous run's results")
    args = parser.parse_args()

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    modules: list[str] = config["only_mutate"]
    started = time.monotonic()
    if not args.keep or not WORK.exists():
        _copy_project(config)
    print(f"mutating {len(modules)} modules in {WORK.relative_to(ROOT)} ...", flush=True)
    _mutmut("run", "--max-children", str(args.max_children))
    elapsed = time.monotonic() - started
    found = _results()
    statuses = {name: status for name, (status, _) in found.items()}
    survivors = sorted(n for n, s in statuses.items() if s not in KILLED)
    diffs = {n: found[n][1] for n in survivors}
    equivalent: dict[str, str] = {}
    stale = []
    for name, (line, why) in EQUIVALENT.items():
        if name in diffs and line in _mutated_lines(diffs[name]):
            equivalent[name] = why
        else:
            stale.append(name)

    per_module: dict[str, Counter[str]] = {m: Counter() for m in modules}
    for name, status in statuses.items():
        kind = "killed" if status in KILLED else "equivalent" if name in equivalent else status
        per_module.setdefault(_module_of(name, modules), Counter())[kind] += 1

    print(f"\n{'module':38} {'mutants':>7} {'killed':>7} {'equiv':>6} {'left':>5} {'score':>7}")
    total: Counter[str] = Counter()
    for module, c in per_module.items():
        total.update(c)
        n = sum(c.values())
        left = n - c["killed"] - c["equivalent"]
        score = c["killed"] / (n - c["equivalent"]) if n - c["equivalent"] else 1.0
        print(f"{module:38} {n:7} {c['killed']:7} {c['equivalent']:6} {left:5} {score:7.1%}")
    n = sum(total.values())
    left_over = [s for s in survivors if s not in equivalent]
    overall = total["killed"] / (n - total["equivalent"]) if n - total["equivalent"] else 1.0
    raw = total["killed"] / n if n else 1.0
    print(
        f"{'overall':38} {n:7} {total['killed']:7} {total['equivalent']:6} "
        f"{len(left_over):5} {overall:7.1%}"
    )
    print(f"\nkilled / all mutants: {raw:.1%}; run time {elapsed:.0f} s")

    if equivalent:
        print("\nequivalent mutants (behave as the original):")
        for name, why in sorted(equivalent.items()):
            print(f"  {name}: {why}")
    if stale:
        print("\nstale EQUIVALENT entries (mutant gone, killed or renumbered): " + ", ".join(stale))
    if left_over:
        print(f"\nsurviving mutants ({len(left_over)}):")
        for name in left_over:
            print(f"--- {name} ({statuses[name]})")
            print("\n".join(line for line in diffs[name].splitlines()[1:] if line.strip()))
    ok = overall >= TARGET and not left_over
    print(f"\n{'PASS' if ok else 'FAIL'}: score {overall:.1%} (target {TARGET:.0%}), "
          f"{len(left_over)} unexplained survivor(s)")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
