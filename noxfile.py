"""Test, lint and docs sessions for the l0 monorepo.

``nox`` with no arguments runs ``arch`` (import-linter contracts and mypy)
and the test sessions: each package alone (with only l0-core beside it),
everything together through ``l0-python``, and the example plugin installed
the way a user would install it. ``nox -s lint`` and
``nox -s docs`` run ruff and a strict mkdocs build.

torch is installed first in every session, pinned to ``torch==2.13.0`` (pip
finds the CPU wheel through ``PIP_FIND_LINKS``/pip.conf when one is
provided); set ``L0_NOX_TORCH`` to install another requirement instead, e.g.
``L0_NOX_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PACKAGES = {
    "core": ("l0-core", "l0_core"),
    "nn": ("l0-nn", "l0_nn"),
    "gates": ("l0-gates", "l0_gates"),
    "calibrate": ("l0-calibrate", "l0_calibrate"),
}
ALL_IMPORTS = [imp for _, imp in PACKAGES.values()] + ["l0"]
TORCH = shlex.split(os.environ.get("L0_NOX_TORCH", "torch==2.13.0"))
TORCH_DIR = ROOT / ".nox" / "_torch"
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]

nox.options.sessions = ["arch", "core", "nn", "gates", "calibrate", "all", "plugin", "clients"]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True


def _pip(session: nox.Session, *args: str) -> None:
    """``pip install`` without byte-compiling (4x faster for torch; imports compile lazily)."""
    session.install("--no-compile", *args)


def _install_torch(session: nox.Session) -> None:
    """torch first, so that nothing later pulls a (multi-GB) build of its own choosing.

    torch is installed once per nox run into ``.nox/_torch`` (``pip install
    --target``) and every session sees it through a ``.pth`` file in its own
    site-packages: pip then counts torch as installed and never fetches another
    build, and the 800 MB copy happens once instead of once per session.
    Set ``L0_NOX_SHARED_TORCH=0`` to install torch into each session instead.
    """
    if os.environ.get("L0_NOX_SHARED_TORCH", "1") == "0":
        _pip(session, *TORCH)
        return
    spec = " ".join(TORCH)
    marker = TORCH_DIR / ".l0-requirement"
    if not marker.is_file() or marker.read_text() != spec:
        session.log(f"installing {spec} once into {TORCH_DIR}")
        _pip(session, "--upgrade", "--target", str(TORCH_DIR), *TORCH)
        marker.write_text(spec)
    purelib = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True
    )
    if not purelib:  # `nox --install-only` style runs: nothing to link
        return
    Path(purelib.strip(), "_l0_shared_torch.pth").write_text(f"{TORCH_DIR}\n")


def _assert_not_importable(session: nox.Session, modules: list[str]) -> None:
    code = (
        "import importlib.util, sys\n"
        f"present = [m for m in {modules!r} if importlib.util.find_spec(m) is not None]\n"
        "sys.exit(f'should not be importable here: {present}' if present else 0)\n"
    )
    session.run("python", "-c", code)
    session.log(f"not importable, as intended: {', '.join(modules)}")


def _package_session(session: nox.Session, key: str) -> None:
    dist, module = PACKAGES[key]
    _install_torch(session)
    targets = ["packages/l0-core[test]"]
    if key != "core":
        targets.append(f"packages/{dist}[test]")
    _pip(session, *targets)
    _assert_not_importable(session, [m for m in ALL_IMPORTS if m not in ("l0_core", module)])
    session.run(
        *PYTEST, f"packages/{dist}/tests", "--doctest-modules", "--pyargs", module, *session.posargs
    )


@nox.session
def core(session: nox.Session) -> None:
    """l0-core alone (non-editable install): its tests and doctests."""
    _package_session(session, "core")


@nox.session
def nn(session: nox.Session) -> None:
    """l0-nn with only l0-core: its tests and doctests; the other packages are absent."""
    _package_session(session, "nn")


@nox.session
def gates(session: nox.Session) -> None:
    """l0-gates with only l0-core: its tests and doctests; the other packages are absent."""
    _package_session(session, "gates")


@nox.session
def calibrate(session: nox.Session) -> None:
    """l0-calibrate with only l0-core: its tests and doctests; the other packages are absent."""
    _package_session(session, "calibrate")


@nox.session(name="all")
def all_(session: nox.Session) -> None:
    """Everything through the l0-python meta-distribution: every test suite plus the facade."""
    _install_torch(session)
    editable = []
    for dist, _ in PACKAGES.values():
        editable += ["-e", f"packages/{dist}[test]"]
    _pip(session, *editable, "-e", ".[dev]")
    session.run(
        *PYTEST,
        *(f"packages/{d}/tests" for d, _ in PACKAGES.values()),
        "tests",
        "--doctest-modules",
        "src/l0",
        *session.posargs,
    )


@nox.session
def plugin(session: nox.Session) -> None:
    """Install examples/l0-plugin-example from its folder as a user would, find it, run its tests."""
    _install_torch(session)
    _pip(session, "packages/l0-core")
    session.cd("examples/l0-plugin-example")
    _pip(session, ".[test]")
    listing = session.run("l0", "plugins", silent=True) or ""
    session.log(listing)
    for expected in (
        "straight_through (l0-plugin-example",
        "gates: straight_through",
        "schedules: plateau_cosine",
    ):
        if expected not in listing:
            session.error(f"`l0 plugins` does not list the example plugin ({expected!r} missing)")
    session.run(
        "python",
        "-c",
        "from l0_core import make_gate, TemperatureScheduler; "
        "g = make_gate('straight_through', 4); "
        "s = TemperatureScheduler(schedule='plateau_cosine'); "
        "print(type(g).__name__, s.get_temperature(99))",
    )
    session.run(
        *PYTEST, "tests", "--doctest-modules", "--pyargs", "l0_plugin_example", *session.posargs
    )


#: The published clients whose own, unmodified test suites run against our packages:
#: (distribution, exact version, extra ``pip download`` options).
CLIENTS = [
    ("l0-python", "0.6.2", []),
    # microcalibrate 0.22.3 declares Python >= 3.13 but runs on 3.11.
    ("microcalibrate", "0.22.3", ["--ignore-requires-python"]),
]
#: What the client suites import beside our packages (microcalibrate is installed
#: with --no-deps: its declared Python floor would stop pip).
CLIENT_TEST_DEPS = [
    "pytest",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "tqdm",
    "optuna",
    "pydantic",
]
#: The only client tests not run: each tests a private implementation detail of
#: l0-python 0.6.2, not its published behaviour.
CLIENT_DESELECT: dict[str, str] = {
    # "l0-python/tests/test_x.py::TestX::test_y": "checks the private ... of 0.6.2",
}


def _fetch_client(session: nox.Session, dist: str, version: str, extra: list[str], dest: Path):
    """Download the client's sdist by exact version and unpack its tests (no copy lives here)."""
    import tarfile

    download = dest / "download"
    session.run(
        "python",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        *extra,
        f"{dist}=={version}",
        "-d",
        str(download),
        silent=True,
    )
    (archive,) = download.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        root = tar.getnames()[0].split("/")[0]
        tar.extractall(dest, filter="data")
    source = dest / root
    if not (source / "tests").is_dir():
        session.error(f"{dist} {version}: the sdist has no tests/ folder")
    return source


@nox.session
def clients(session: nox.Session) -> None:
    """The published clients' own test suites, unmodified, against our packages.

    l0-python 0.6.2's ``tests/`` (our ``l0`` facade must be a drop-in for it) and
    microcalibrate 0.22.3's ``tests/`` (PolicyEngine's calibrator, which imports
    ``from l0 import HardConcrete``), both fetched from the package index at test
    time. Only the tests listed in ``CLIENT_DESELECT`` are left out.
    """
    import shutil
    import tempfile

    _install_torch(session)
    _pip(session, *(f"packages/{d}" for d, _ in PACKAGES.values()), ".", *CLIENT_TEST_DEPS)
    _pip(session, "--no-deps", "--ignore-requires-python", "microcalibrate==0.22.3")
    work = Path(tempfile.mkdtemp(prefix="l0-clients-"))
    try:
        for dist, version, extra in CLIENTS:
            source = _fetch_client(session, dist, version, extra, work / dist)
            if dist == "l0-python":
                # Only its tests: 0.6.2's own `l0` package must not shadow ours.
                run_dir = work / "l0-python-tests"
                shutil.copytree(source / "tests", run_dir / "tests")
            else:
                run_dir = source  # its tests import `src.microcalibrate` from the sdist root
            deselect = [
                arg
                for key in CLIENT_DESELECT
                if key.startswith(f"{dist}/")
                for arg in ("--deselect", key.split("/", 1)[1])
            ]
            session.log(f"{dist} {version}: running its tests/ against our packages")
            session.chdir(run_dir)
            session.run(*PYTEST, "-o", "addopts=", "tests", *deselect, *session.posargs)
    finally:
        session.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


@nox.session
def arch(session: nox.Session) -> None:
    """Layers enforced: import-linter contracts and mypy on packages/*/src (config: pyproject.toml).

    The packages are read from source (PYTHONPATH / mypy_path), not installed; torch is
    installed for its type information.
    """
    _install_torch(session)
    _pip(session, "mypy>=1.10", "import-linter>=2.0", "numpy", "pluggy>=1.3")
    src = [str(ROOT / "packages" / dist / "src") for dist, _ in PACKAGES.values()]
    session.env["PYTHONPATH"] = os.pathsep.join(src)
    session.run("lint-imports")
    session.run("mypy", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check on the whole repository."""
    _pip(session, "ruff>=0.5")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the mkdocs site with --strict (any warning fails)."""
    _pip(session, "mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", "ruff")
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # silence mkdocs-material's banner about MkDocs 2
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"), *session.posargs)
