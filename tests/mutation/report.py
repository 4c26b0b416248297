"""The kill ratio of a ``mutmut run`` (``make mutants``) and the survivors nobody has reviewed.

Run from the repository root after ``mutmut run``. Prints killed (timeouts count as killed: the
tests ran past their CPU limit), survived and untested mutants, and each survivor that is not
listed in ``tests/mutation/equivalent.txt`` (one line per mutant that cannot change behaviour:
``<mutant name> <fingerprint>  <why>``). The fingerprint is a hash of the mutant's code: mutmut
numbers a function's mutants in order, so editing the function renumbers them, and a listed name
whose code changed since its review counts as unreviewed again. ``--stamp`` adds the fingerprint
to lines written without one (once they are reviewed). Two ratios: killed over all tested, and killed over the tested ones
that can change behaviour (the listed ones left out, as the mutation-testing literature scores).
Exits 1 when the second is under ``--goal`` (default 95 %) or a survivor is unreviewed.

Some mutants no test can kill inside mutmut's instrumented copy, where every function runs in a
wrapper: a warning's ``stacklevel`` then points into the wrapper, whatever its value.
``tests/mutation/outside.txt`` lists them (``<mutant name> <fingerprint>  <test node id>  <why>``);
each is applied to a copy of the tree and counts as killed only when its test fails there.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
EQUIVALENT = HERE / "equivalent.txt"
OUTSIDE = HERE / "outside.txt"
FINGERPRINT = 10  # hex digits of sha256


def parse(line: str) -> tuple[str, str, str] | None:
    """An equivalent.txt line -> (mutant name, fingerprint or "", why); None for comments."""
    if not line.strip() or line.startswith("#"):
        return None
    name, _, rest = line.strip().partition(" ")
    stamp, _, why = rest.strip().partition(" ")
    if len(stamp) != FINGERPRINT or any(c not in "0123456789abcdef" for c in stamp):
        stamp, why = "", rest
    return name, stamp, why.strip()


def reviewed(path: Path = EQUIVALENT) -> dict[str, tuple[str, str]]:
    """{mutant name: (fingerprint or "", why)} from equivalent.txt (or outside.txt)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return {entry[0]: entry[1:] for entry in map(parse, lines) if entry}


def killed_outside(name: str, test: str, mutmut: str) -> bool:
    """Whether ``test`` fails on a copy of the tree (modalmae/, tests/, pyproject.toml) with mutant
    ``name``'s change applied as a plain edit, outside mutmut's wrappers."""
    shown = subprocess.run([mutmut, "show", name], check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("modalmae", "tests"):
            shutil.copytree(part, Path(tmp, part), ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy("pyproject.toml", tmp)
        subprocess.run(["patch", "-p0", "--quiet", "-d", tmp], input=shown[shown.index("--- "):], text=True, check=True)
        env = {**os.environ, "PYTHONPATH": tmp, "OMP_NUM_THREADS": "1"}
        env.pop("MUTANT_UNDER_TEST", None)
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test], cwd=tmp, env=env, capture_output=True)
        return run.returncode == 1  # tests ran and one failed (not a collection or usage error)


class Mutants:
    """The mutated sources in mutants/: mutmut writes each mutant as a function named after it."""

    def __init__(self, root: Path = Path("mutants")) -> None:
        self.root, self.functions = root, {}

    def fingerprint(self, name: str) -> str | None:
        """Hash of mutant ``name``'s code (its own name left out); None when there is no such mutant."""
        module, _, function = name.rpartition(".")
        if module not in self.functions:
            path = self.root.joinpath(*module.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            source = path.read_text() if path.is_file() else ""
            lines = source.splitlines()
            self.functions[module] = {
                node.name: "\n".join(lines[node.lineno - 1 : node.end_lineno])
                for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
        code = self.functions[module].get(function)
        return None if code is None else hashlib.sha256(code.replace(function, "").encode()).hexdigest()[:FINGERPRINT]


def stamp(mutants: Mutants, path: Path) -> int:
    """Write the fingerprint into every line of ``path`` that has none; how many were stamped."""
    if not path.is_file():
        return 0
    lines, stamped = [], 0
    for line in path.read_text().splitlines():
        entry = parse(line)
        if entry and not entry[1] and (fingerprint := mutants.fingerprint(entry[0])):
            line, stamped = f"{entry[0]} {fingerprint}  {entry[2]}", stamped + 1
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return stamped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", type=float, default=95.0, help="least kill ratio, in percent")
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")), help="the mutmut executable")
    parser.add_argument("--stamp", action="store_true", help="fingerprint the lines of equivalent.txt and outside.txt that have none, then report")
    args = parser.parse_args(argv)
    mutants = Mutants()
    if args.stamp:
        for path in (EQUIVALENT, OUTSIDE):
            print(f"stamped {stamp(mutants, path)} lines of {path}")
    subprocess.run([args.mutmut, "export-cicd-stats"], check=True, capture_output=True)
    stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
    listing = subprocess.run([args.mutmut, "results"], check=True, capture_output=True, text=True).stdout
    survivors = [line.strip().rsplit(": ", 1)[0] for line in listing.splitlines() if line.strip().endswith((": survived", ": no tests"))]
    known, outside = reviewed(), reviewed(OUTSIDE)
    # Listed as killed outside mutmut, still the same mutant, and its test fails on it in a plain copy.
    shown_killed = [
        s for s in survivors
        if s in outside and outside[s][0] == mutants.fingerprint(s) and killed_outside(s, outside[s][1].split()[0], args.mutmut)
    ]
    survivors = [s for s in survivors if s not in shown_killed]
    killed = stats["killed"] + stats["timeout"] + len(shown_killed)
    # Mutants run (a partial run, ONLY=..., leaves the others unchecked: they do not count).
    counted = stats["killed"] + stats["timeout"] + stats["survived"] + stats["no_tests"] + stats["suspicious"] + stats["segfault"]
    # A listed mutant counts as reviewed while its code is the code that was reviewed.
    changed = [s for s in survivors if s in known and known[s][0] != mutants.fingerprint(s)]
    unreviewed = [s for s in survivors if s not in known or s in changed]
    equivalent = len(survivors) - len(unreviewed)
    raw = 100.0 * killed / counted if counted else 0.0
    # The mutation score of the literature: mutants that cannot change behaviour leave the denominator.
    score = 100.0 * killed / (counted - equivalent) if counted > equivalent else 0.0
    print(
        f"mutants: {counted} tested, {killed} killed ({stats['timeout']} by timeout, {len(shown_killed)} outside mutmut's wrappers), "
        f"{stats['survived'] - len(shown_killed)} survived, {stats['no_tests']} reached by no test"
    )
    print(f"survivors listed as unable to change behaviour: {equivalent}; not reviewed: {len(unreviewed)}")
    print(f"kill ratio: {raw:.1f} % of all tested; {score:.1f} % of those that can change behaviour (goal {args.goal:.0f} %)")
    for name in unreviewed:
        why = "listed, but its code is not what was reviewed (no or another fingerprint)" if name in changed else "mutmut show " + name
        print(f"  {name}   ({why})")
    return 0 if score >= args.goal and not unreviewed else 1


if __name__ == "__main__":
    sys.exit(main())
