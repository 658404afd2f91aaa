"""Every regular expression that sees untrusted input finishes on hostile input of 100 KB in
under a second.

The inputs are built from each pattern's own literals (each repeated, and each pair repeated, the
shape that drives nested quantifiers into exponential backtracking), plus runs of white space and
junk. Matching runs in a child process, because a backtracking match cannot be interrupted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Modules whose module-level patterns see documents, headers or URLs from outside.
UNTRUSTED = ["conveyor.extractor.extract", "conveyor.extractor.blocks", "conveyor.extractor.markup",
             "conveyor.extractor.pdf", "conveyor.summarizer.prose",
             "conveyor.summarizer.backends.chunks", "conveyor.gateway.app", "conveyor.gateway.models",
             "conveyor.notifier.webhooks", "conveyor.payloads", "conveyor.events"]
SIZE = 100_000
LIMIT_SECONDS = 1.0

CHILD = r"""
import importlib, itertools, json, re, sys, time
from re import _parser

SIZE = int(sys.argv[1])


def literals(pattern):
    found, run = [], []
    def walk(items):
        for op, arg in items:
            if op is _parser.LITERAL:
                run.append(chr(arg))
                continue
            if run:
                found.append("".join(run)); run.clear()
            if op in (_parser.SUBPATTERN,):
                walk(arg[-1])
            elif op in (_parser.MAX_REPEAT, _parser.MIN_REPEAT, _parser.POSSESSIVE_REPEAT):
                walk(arg[2])
            elif op is _parser.BRANCH:
                for branch in arg[1]:
                    walk(branch)
                    if run:
                        found.append("".join(run)); run.clear()
            elif op in (_parser.ASSERT, _parser.ASSERT_NOT):
                walk(arg[1])
    walk(_parser.parse(pattern.pattern if isinstance(pattern.pattern, str) else pattern.pattern.decode("latin-1"), pattern.flags & ~re.DEBUG & 0xFF))
    if run:
        found.append("".join(run))
    return sorted({f for f in found if f})[:24]


def hostile(pattern):
    atoms = literals(pattern) or ["a"]
    pieces = [*atoms, *("".join(p) for p in itertools.permutations(atoms, 2))]
    texts = [(piece * (SIZE // len(piece) + 1))[:SIZE] for piece in pieces]
    texts += [" " * SIZE, "\n" * SIZE, "a" * SIZE, "".join(atoms) + " " * SIZE, "\x00\xff<>=\"'-" * (SIZE // 9)]
    return texts


def main():
    results = []
    for name in sys.argv[2:]:
        module = importlib.import_module(name) if not name.startswith("pattern:") else None
        patterns = ({n: v for n, v in vars(module).items() if isinstance(v, re.Pattern)} if module
                    else {"given": re.compile(eval(name.removeprefix("pattern:")), re.I | re.S)})
        for attr, pattern in patterns.items():
            worst = 0.0
            for text in hostile(pattern):
                data = text.encode("latin-1", "replace") if isinstance(pattern.pattern, bytes) else text
                print(json.dumps({"running": f"{name}.{attr}"}), flush=True)
                started = time.perf_counter()
                pattern.search(data)
                pattern.match(data)
                pattern.sub(data[:0], data)
                worst = max(worst, time.perf_counter() - started)
            results.append({"pattern": f"{name}.{attr}", "seconds": worst})
    print(json.dumps({"results": results}), flush=True)


main()
"""


def run_child(targets: list[str], timeout: float) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(SIZE), *targets], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])["results"]


def test_the_probe_catches_catastrophic_backtracking() -> None:
    """The extractor's old HTML-fragment pattern hung on a 281-byte document; the probe must catch it."""
    old = r'rb"\s*(<!--.*?-->\s*)*<(p|div|span)[\s>/]"'
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([f"pattern:{old}"], timeout=5)


@pytest.mark.parametrize("module", UNTRUSTED)
def test_every_pattern_finishes_on_hostile_input(module: str) -> None:
    results = run_child([module], timeout=120)
    slow = {r["pattern"]: round(r["seconds"], 3) for r in results if r["seconds"] >= LIMIT_SECONDS}
    assert not slow, slow
