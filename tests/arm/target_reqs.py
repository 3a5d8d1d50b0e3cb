"""Runs INSIDE the emulated root, with the target's own Python: what would pip decide there?

    python3 target_reqs.py missing DIST   requirements of DIST (recursively, through what is installed) that
                                          nothing installed satisfies, one per line, markers evaluated HERE
    python3 target_reqs.py check DIST     every requirement of DIST with the distribution that satisfies it and
                                          where it lives (a wheel from the registry or the OS's package);
                                          exit 1 if one is missing or the wrong version

Markers are evaluated by this interpreter (platform_machine armv7l/aarch64, its python_version), as pip
does on the device, so the host never guesses the target's dependencies. Needs `packaging` on sys.path.
Plain Python 3.9 (Debian bullseye's) must run it.
"""

import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def installed():
    """canonical name -> the distribution Python would import (first on sys.path wins, as for imports)."""
    found = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), d)
    return found


def walk(root):
    dists = installed()
    if canonicalize_name(root) not in dists:
        return [], [(root, "not installed")]
    rows, missing = [], []
    todo, seen = [(root, ("",))], set()
    while todo:
        name, extras = todo.pop(0)
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        for text in dists[canonicalize_name(name)].requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate(dict(default_environment(), extra=e)) for e in extras):
                continue
            dist = dists.get(canonicalize_name(req.name))
            spec = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
            if dist is None:
                missing.append((spec, "not installed"))
                continue
            if not req.specifier.contains(dist.version, prereleases=True):
                missing.append((spec, f"{dist.metadata['Name']} {dist.version} installed"))
                continue
            where = str(dist.locate_file(""))
            rows.append((name, spec, f"{dist.metadata['Name']} {dist.version}", where))
            todo.append((req.name, tuple(sorted(req.extras)) or ("",)))
    return rows, missing


def main(argv):
    if len(argv) != 3 or argv[1] not in ("missing", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    rows, missing = walk(argv[2])
    if argv[1] == "missing":
        for spec, _ in missing:
            print(spec)
        return 0
    env = default_environment()
    print(f"target: {env['platform_machine']} {env['platform_system']}, Python {env['python_full_version']}")
    for parent, spec, dist, where in rows:
        origin = "OS package" if "/dist-packages" in where else "registry wheel"
        print(f"  {parent:24} needs {spec:34} -> {dist:34} ({origin})")
    for spec, why in missing:
        print(f"  MISSING {spec}: {why}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
