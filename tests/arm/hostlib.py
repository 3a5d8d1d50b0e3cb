"""Host-side helpers of tests/arm/run.sh (plain Python 3, standard library only).

    python3 hostlib.py mirror                 the Debian mirror apt itself uses (from /etc/apt/sources.list,
                                              sources.list.d/*.list and deb822 *.sources), e.g. http://.../debian
    python3 hostlib.py alternatives ROOT DEB...   do the one part of dpkg's second stage that shared
                                              libraries need: the links `update-alternatives --install`
                                              would make (e.g. libblas.so.3 for NumPy), read from each
                                              package's postinst; the highest priority wins
    python3 hostlib.py glibc DEB...           the glibc version (e.g. 2.36) of the libc6 package among DEBs
"""

import glob
import io
import os
import re
import shlex
import subprocess
import sys
import tarfile


def _sources():
    """(types, uris, suites, components) for every enabled entry apt reads."""
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in files:
        try:
            lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] not in ("deb", "deb-src"):
                continue
            rest = words[1:]
            if rest and rest[0].startswith("["):  # [arch=amd64 signed-by=...]
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2:
                yield [words[0]], [rest[0]], [rest[1]], rest[2:]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for raw in stanza.splitlines():
                if raw.lstrip().startswith("#") or not raw.strip():
                    continue
                if raw[0] in " \t" and key:  # continuation line
                    fields[key] += " " + raw.strip()
                    continue
                if ":" in raw:
                    key, value = raw.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
                continue
            yield (fields.get("types", "deb").split(), fields["uris"].split(), fields.get("suites", "").split(),
                   fields.get("components", "").split())


def mirror():
    """The first `deb` URI that serves a Debian release suite (not -security/-updates/-backports) with main."""
    for types, uris, suites, components in _sources():
        if "deb" not in types or "main" not in components:
            continue
        if not any("-" not in s and "/" not in s for s in suites):
            continue
        for uri in uris:
            if "security" in uri or not uri.startswith(("http://", "https://", "file:/")):
                continue
            return uri.rstrip("/")
    return None


def _postinst(deb):
    """The postinst script of a .deb (an `ar` archive holding control.tar.{xz,gz,zst}), or ""."""
    try:
        with open(deb, "rb") as f:
            data = f.read()
        pos = 8  # "!<arch>\n"
        while pos + 60 <= len(data):
            name = data[pos:pos + 16].decode().strip().rstrip("/")
            size = int(data[pos + 48:pos + 58])
            body = data[pos + 60:pos + 60 + size]
            pos += 60 + size + (size & 1)
            if not name.startswith("control.tar"):
                continue
            if name.endswith(".zst"):
                break  # tarfile cannot read zstd: ask dpkg-deb
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == "postinst":
                        return tar.extractfile(member).read().decode("utf-8", "replace")
            return ""
    except (OSError, ValueError, tarfile.TarError):
        pass
    try:
        tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True, check=True).stdout
        out = subprocess.run(["tar", "-xO", "./postinst"], input=tar, capture_output=True)
        return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else ""
    except (OSError, subprocess.CalledProcessError):
        return ""


def alternatives(root, debs):
    best = {}
    for deb in debs:
        text = _postinst(deb).replace("\\\n", " ")
        if "update-alternatives" not in text:
            continue
        for line in text.splitlines():
            if "update-alternatives" not in line or "--install" not in line:
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            i = words.index("--install") if "--install" in words else -1
            if i < 0 or len(words) < i + 5:
                continue
            link, _name, path, prio = words[i + 1:i + 5]
            if "$" in link + path or not prio.lstrip("-").isdigit():
                continue
            if not os.path.lexists(root + path):
                continue
            if link not in best or int(prio) > best[link][1]:
                best[link] = (path, int(prio))
    made = 0
    for link, (path, _prio) in sorted(best.items()):
        target = root + link
        if os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.relpath(path, os.path.dirname(link)), target)
        made += 1
    return made


def glibc(debs):
    for deb in debs:
        m = re.match(r"libc6_(\d+)\.(\d+)", os.path.basename(deb))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def main(argv):
    if len(argv) >= 2 and argv[1] == "mirror":
        uri = mirror()
        if not uri:
            return 1
        print(uri)
        return 0
    if len(argv) >= 3 and argv[1] == "alternatives":
        print(alternatives(argv[2].rstrip("/"), argv[3:]))
        return 0
    if len(argv) >= 2 and argv[1] == "glibc":
        v = glibc(argv[2:])
        if not v:
            return 1
        print(v)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
