"""Checks what ``python -m build`` made, for .ci/run: ``python .ci/check_dist.py DIST_DIR [PURE_WHEEL_DIR]``.

- The wheel holds the compiled core (``fastconsumer/_core_c*.so``), its stub ``_core_c.pyi``, ``py.typed``,
  the LICENSE and every module of the package, and nothing else (no tests, no generated C).
- The sdist holds every file git tracks that a build or the tests need: the package, ``tests/`` (conftest.py
  and kafka_helpers.py too), ``dev/`` (the local broker), README.md (the README test runs its example),
  docker-compose.yml, the build files, LICENSE and CHANGELOG.md; and nothing built (no .so, no .c).
- Both carry the version of ``fastconsumer/__init__.py``; the pure-Python wheel, if given, is
  ``py3-none-any`` without a compiled core.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDIST_TOP = ["README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in"]
SDIST_TOP += ["docker-compose.yml"]
BUILT = ["*.so", "*.pyd", "*.c", "*.pyc", "*/__pycache__/*"]


def fail(message: str) -> None:
    sys.exit(f"check_dist: {message}")


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "fastconsumer/__init__.py").read_text(), re.M)
    if not found:
        fail("no __version__ in fastconsumer/__init__.py")
    return found.group(1)


def one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        fail(f"expected one {pattern} in {directory}, found {[p.name for p in found]}")
    return found[0]


def check_wheel(wheel: Path, want_version: str, compiled: bool) -> list[str]:
    names = zipfile.ZipFile(wheel).namelist()
    if not wheel.name.startswith(f"fastconsumer-{want_version}-"):
        fail(f"{wheel.name} does not carry version {want_version}")
    cores = [n for n in names if fnmatch.fnmatch(n, "fastconsumer/_core_c*.so")]
    if compiled and len(cores) != 1:
        fail(f"{wheel.name}: expected one compiled core fastconsumer/_core_c*.so, found {cores}")
    if not compiled and (cores or not wheel.name.endswith("-py3-none-any.whl")):
        fail(f"{wheel.name}: the pure-Python wheel must be py3-none-any without a compiled core")
    needed = [
        "fastconsumer/_core_c.pyi",
        "fastconsumer/py.typed",
        f"fastconsumer-{want_version}.dist-info/licenses/LICENSE",
    ]
    needed += [p for p in tracked("fastconsumer") if p.endswith(".py")]
    missing = [n for n in needed if n not in names]
    if missing:
        fail(f"{wheel.name} lacks {missing}")
    strays = [
        n for n in names if not n.startswith(("fastconsumer/", f"fastconsumer-{want_version}.dist-info/"))
    ]
    strays += [n for n in names if n.endswith(".c") or "__pycache__" in n]
    if strays:
        fail(f"{wheel.name} holds files it should not: {strays}")
    size = sum(i.file_size for i in zipfile.ZipFile(wheel).infolist() if i.filename in cores)
    core = f"compiled core {cores[0]} ({size / 1e6:.1f} MB)" if cores else "no compiled core (pure Python)"
    return [f"wheel {wheel.name}: {len(names)} files; {core}, fastconsumer/_core_c.pyi, py.typed, LICENSE"]


def check_sdist(sdist: Path, want_version: str) -> list[str]:
    prefix = f"fastconsumer-{want_version}/"
    if sdist.name != f"fastconsumer-{want_version}.tar.gz":
        fail(f"{sdist.name} does not carry version {want_version}")
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    needed = [*SDIST_TOP, *tracked("fastconsumer", "tests", "dev")]
    missing = [n for n in needed if n not in names]
    if missing:
        fail(f"{sdist.name} lacks {missing}")
    built = [n for n in names if any(fnmatch.fnmatch(n, p) for p in BUILT)]
    if built:
        fail(f"{sdist.name} holds built files: {built}")
    tests = sorted(n for n in names if n.startswith("tests/"))
    dev = sorted(n for n in names if n.startswith("dev/"))
    return [
        f"sdist {sdist.name}: {len(names)} files; every tracked file of fastconsumer/, tests/ and dev/",
        f"  tests: {len(tests)} files, conftest.py and kafka_helpers.py among them; dev: {', '.join(dev)}",
        f"  and {', '.join(SDIST_TOP)}",
    ]


def main() -> None:
    dist = Path(sys.argv[1])
    want = version()
    report = check_sdist(one(dist, "*.tar.gz"), want) + check_wheel(one(dist, "*.whl"), want, compiled=True)
    if len(sys.argv) > 2:
        report += check_wheel(one(Path(sys.argv[2]), "*.whl"), want, compiled=False)
    print("\n".join(["check_dist: OK", *report]))


if __name__ == "__main__":
    main()
