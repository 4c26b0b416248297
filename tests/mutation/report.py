"""The kill ratio of a ``mutmut run`` (``make mutants``) and the survivors nobody has reviewed.

Run from the repository root after ``mutmut run``. Prints killed (timeouts count as killed: the
tests ran past their CPU limit), survived and untested mutants, and each survivor that is not
listed in ``tests/mutation/equivalent.txt`` (one line per mutant that cannot change behaviour:
``<mutant name>  <why>``). Two ratios: killed over all tested, and killed over the tested ones
that can change behaviour (the listed ones left out, as the mutation-testing literature scores).
Exits 1 when the second is under ``--goal`` (default 95 %) or a survivor is unreviewed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def reviewed() -> dict[str, str]:
    path = HERE / "equivalent.txt"
    entries = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip() and not line.startswith("#"):
            name, _, why = line.strip().partition(" ")
            entries[name] = why.strip()
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", type=float, default=95.0, help="least kill ratio, in percent")
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")), help="the mutmut executable")
    args = parser.parse_args(argv)
    subprocess.run([args.mutmut, "export-cicd-stats"], check=True, capture_output=True)
    stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
    listing = subprocess.run([args.mutmut, "results"], check=True, capture_output=True, text=True).stdout
    survivors = [line.strip().rsplit(": ", 1)[0] for line in listing.splitlines() if line.strip().endswith((": survived", ": no tests"))]
    known = reviewed()
    killed = stats["killed"] + stats["timeout"]
    # Mutants run (a partial run, ONLY=..., leaves the others unchecked: they do not count).
    counted = killed + stats["survived"] + stats["no_tests"] + stats["suspicious"] + stats["segfault"]
    unreviewed = [s for s in survivors if s not in known]
    equivalent = len(survivors) - len(unreviewed)
    raw = 100.0 * killed / counted if counted else 0.0
    # The mutation score of the literature: mutants that cannot change behaviour leave the denominator.
    score = 100.0 * killed / (counted - equivalent) if counted > equivalent else 0.0
    print(f"mutants: {counted} tested, {killed} killed ({stats['timeout']} by timeout), {stats['survived']} survived, {stats['no_tests']} reached by no test")
    print(f"survivors listed as unable to change behaviour: {equivalent}; not reviewed: {len(unreviewed)}")
    print(f"kill ratio: {raw:.1f} % of all tested; {score:.1f} % of those that can change behaviour (goal {args.goal:.0f} %)")
    for name in unreviewed:
        print(f"  {name}   (mutmut show {name})")
    return 0 if score >= args.goal and not unreviewed else 1


if __name__ == "__main__":
    sys.exit(main())
