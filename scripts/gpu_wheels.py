#!/usr/bin/env python3
"""The wheels a GPU machine without network needs for fiberlab, and the checks on them (docs/gpu.md).

The lent GPU machine (one H200; Python 3.12 with torch preinstalled, no network) lacks some of our
runtime dependencies. They travel as cp312 manylinux wheels in ``.whl/``, downloaded here by
``scripts/gpu_wheels.sh`` and installed there by ``scripts/gpu_check.py`` (this module's
``install``). Standard library only at the top level (``packaging`` is imported where marker and
version checks need it), so ``gpu_check.py`` can import it on any Python.

    python3 scripts/gpu_wheels.py pins              # NAME==VERSION, one a line (what gpu_wheels.sh downloads)
    python3 scripts/gpu_wheels.py check .whl        # complete? one version each? the pins? under 60 MiB?
    python3 scripts/gpu_wheels.py install .whl SITE # on the GPU machine: install what is missing into SITE
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MIB = 60  # the device tool carries 64 MiB in all (working tree + carried paths); the tree is ~4 MiB

# Python packages already on the GPU machine: /work/.library/device/KINDS.md, section "Python
# packages already there" (nvidia-h200, image 'cuda', as read on a machine running it on 2026-11-17).
# tests/test_gpu_check.py compares this with that file when it is present.
PREINSTALLED = frozenset("""
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
    nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
    onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# The wheels carried: name -> version. Versions pinned in pyproject.toml are those pins; the others
# are the versions this project's .venv runs the test suite with. Why each is needed:
WHEELS = {
    # runtime dependencies in pyproject.toml that the GPU machine lacks
    "gymnasium": "1.4.0",
    "ale-py": "0.12.1",
    "mettagrid": "0.26.22",
    "popgym": "1.0.7",
    "pydantic": "2.14.4",
    "zstandard": "0.25.0",
    "lz4": "4.4.5",
    # what those need (their METADATA's Requires-Dist) that the GPU machine lacks
    "farama-notifications": "0.0.6",  # gymnasium
    "pydantic-core": "2.50.5",  # pydantic (exact pin)
    "annotated-types": "0.8.0",  # pydantic
    "typing-inspection": "0.4.5",  # pydantic
    "boto3": "1.44.8",  # mettagrid
    "botocore": "1.44.8",  # mettagrid, boto3 (16 MiB: a third of the set, but a declared dependency)
    "jmespath": "1.1.0",  # boto3, botocore
    "s3transfer": "0.19.3",  # boto3
    "importnb": "2023.11.1",  # mettagrid (imported by `import mettagrid`)
    "pettingzoo": "1.27.0",  # mettagrid
    "scipy-stubs": "1.17.1.5",  # mettagrid
    "optype": "0.17.1",  # scipy-stubs (optype[numpy])
    "numpy-typing-compat": "20251206.2.4",  # optype[numpy]
    "websockets": "17.4",  # mettagrid
    "websocket-client": "1.9.2",  # mettagrid
}
# Preinstalled there, but in a version nobody has read: carried for the case that it is older than
# our wheels require, and installed there only then (``install`` compares).
IF_OLDER = {
    "typing-extensions": "4.16.0",  # pydantic 2.14 and pydantic-core need >= 4.16.0
    "protobuf": "7.36.2",  # mettagrid needs >= 6.31.1
}

# pip download settings for the GPU machine (pip matches each manylinux_2_N tag exactly:
# mettagrid's wheel is manylinux_2_34).
TARGET = {"python_version": "3.12", "implementation": "cp", "abi": "cp312"}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17, 5)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
# The environment markers of the GPU machine (Python 3.12 on x86-64 Linux), for Requires-Dist lines.
MARKER_ENV = {
    "implementation_name": "cpython", "implementation_version": "3.12.3", "os_name": "posix",
    "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
    "platform_system": "Linux", "platform_version": "", "python_full_version": "3.12.3",
    "python_version": "3.12", "sys_platform": "linux",
}
# What must import on the GPU machine once the wheels are in (the modules fiberlab imports).
IMPORT_CHECK = ("gymnasium, ale_py, ale_py.roms, popgym, pydantic, zstandard, lz4.frame, mettagrid, mettagrid.mettagrid_c, "
                "mettagrid.config.mettagrid_c_config, mettagrid.builder.envs, fiberlab.cli.main, fiberlab.envs")


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Farama_Notifications`` -> ``farama-notifications``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    """``packaging``'s requirements, version and specifiers modules: the installed package, or pip's copy."""
    try:
        from packaging import requirements, specifiers, version
    except ImportError:
        from pip._vendor.packaging import requirements, specifiers, version
    return requirements, version, specifiers


def _specifier(spec: str):
    return _packaging()[2].SpecifierSet(spec)


def pins() -> list[str]:
    return [f"{n}=={v}" for n, v in {**WHEELS, **IF_OLDER}.items()]


def pyproject_requirements(path: Path = ROOT / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of pyproject.toml, as written."""
    import tomllib

    return list(tomllib.loads(path.read_text())["project"]["dependencies"])


@dataclass
class Wheel:
    path: Path
    name: str  # normalised
    version: str
    requires: list[str] = field(default_factory=list)


def read_wheel(path: Path) -> Wheel:
    """Name and version from the file name, Requires-Dist from the wheel's METADATA."""
    dist, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    header = text.split("\n\n", 1)[0]
    requires = [line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("Requires-Dist:")]
    return Wheel(path, norm(dist), version, requires)


def read_wheels(folder: Path) -> list[Wheel]:
    return [read_wheel(p) for p in sorted(Path(folder).glob("*.whl"))]


def requirement_graph(wheels: list[Wheel], roots: list[str] | None = None) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """Walk the requirements from pyproject.toml through the carried wheels' Requires-Dist.

    Returns ``(missing, wanted)``: ``missing`` lists ``(needed_by, requirement)`` for each name that
    is neither preinstalled nor carried; ``wanted`` maps every name reached to its ``(needed_by,
    specifier)`` pairs. Markers are evaluated for the GPU machine, with the extras asked for: a line
    ``X; extra == "numpy"`` of optype counts only where something requires ``optype[numpy]``.
    A preinstalled package's own requirements are the image's business and are not walked.
    """
    requirements = _packaging()[0]
    by_name = {w.name: w for w in wheels}
    todo = [("pyproject.toml", r, "") for r in (pyproject_requirements() if roots is None else roots)]
    seen: set[tuple[str, str]] = set()
    missing: list[tuple[str, str]] = []
    wanted: dict[str, list[tuple[str, str]]] = {}
    while todo:
        by, line, parent_extra = todo.pop()
        req = requirements.Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**MARKER_ENV, "extra": parent_extra}):
            continue
        name = norm(req.name)
        wanted.setdefault(name, []).append((by, str(req.specifier)))
        if name in PREINSTALLED and name not in by_name:
            continue
        if name not in by_name:
            if (by, line) not in missing:
                missing.append((by, line))
            continue
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            todo.extend((name, r, extra) for r in by_name[name].requires)
    return missing, wanted


def check(folder: Path) -> list[str]:
    """Everything wrong with the wheel set in ``folder`` (empty: complete, pinned, one each, small enough)."""
    version = _packaging()[1]
    problems: list[str] = []
    wheels = read_wheels(folder)
    expected = {norm(n): v for n, v in {**WHEELS, **IF_OLDER}.items()}
    seen: dict[str, list[str]] = {}
    for w in wheels:
        seen.setdefault(w.name, []).append(w.version)
        if w.name not in expected:
            problems.append(f"{w.path.name}: not in the list (scripts/gpu_wheels.py WHEELS): delete it")
        elif w.version != expected[w.name]:
            problems.append(f"{w.path.name}: version {w.version}, the list pins {expected[w.name]}: delete it")
        if "cp312" not in w.path.name and "py3-none" not in w.path.name and "abi3" not in w.path.name:
            problems.append(f"{w.path.name}: not a wheel for CPython 3.12")
    problems += [f"{n}: {len(vs)} versions ({', '.join(vs)}): two stop the whole install" for n, vs in seen.items() if len(vs) > 1]
    problems += [f"{n}=={v}: wheel missing: run scripts/gpu_wheels.sh" for n, v in expected.items() if n not in seen]
    missing, wanted = requirement_graph(wheels)
    problems += [f"{req!r} (needed by {by}) is neither preinstalled on the GPU machine nor carried" for by, req in missing]
    carried = {w.name: w.version for w in wheels}
    for name, specs in wanted.items():
        if name in carried:
            for by, spec in specs:
                if spec and not version.Version(carried[name]) in _specifier(spec):
                    problems.append(f"{name} {carried[name]} does not satisfy {spec!r} of {by}")
    for line in pyproject_requirements():
        req = _requirement(line)
        if req.name and norm(req.name) in carried and "==" in str(req.specifier):
            pinned = str(req.specifier).split("==", 1)[1]
            if carried[norm(req.name)] != pinned:
                problems.append(f"{req.name}: pyproject.toml pins {pinned}, the wheel is {carried[norm(req.name)]}")
    total = sum(w.path.stat().st_size for w in wheels)
    if total > MAX_MIB * 2**20:
        problems.append(f"wheels total {total / 2**20:.1f} MiB, over the {MAX_MIB} MiB limit (the device tool carries 64 MiB in all)")
    return problems


def _requirement(line: str):
    return _packaging()[0].Requirement(line)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def imports_ok(env: dict[str, str], py: str = sys.executable) -> tuple[bool, str]:
    """Whether every module fiberlab needs imports in a fresh interpreter under ``env``."""
    r = subprocess.run([py, "-c", f"import {IMPORT_CHECK}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return r.returncode == 0, last


def install(folder: Path, site: Path) -> int:
    """On the GPU machine: install into ``site`` the carried wheels whose package is missing there, or
    there only in a version that fails a requirement on it; then check that everything imports with
    ``PYTHONPATH=src:site`` and list every requirement the installed versions do not meet."""
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))}
    ok, why = imports_ok(base)
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    if ok:
        print("every module fiberlab needs imports already: nothing to install")
        return report(folder if Path(folder).is_dir() else None)
    print(f"missing before install: {why}")
    if not Path(folder).is_dir() or not list(Path(folder).glob("*.whl")):
        print(f"no wheels in {folder}: run `bash scripts/gpu_wheels.sh` on a machine with network and carry {folder}")
        return 1
    wheels = read_wheels(folder)
    _, wanted = requirement_graph(wheels)
    chosen, kept = [], []
    for w in wheels:
        have = installed_version(w.name)
        if have is None or not _satisfies(have, [s for _, s in wanted.get(w.name, [])]):
            chosen.append(w)
        else:
            kept.append(f"{w.name} {have}")
    print(f"installing {len(chosen)} wheels into {site}: {', '.join(f'{w.name} {w.version}' for w in chosen)}")
    if kept:
        print(f"kept as installed (they meet every requirement): {', '.join(kept)}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--upgrade", "--target", str(site), *(str(w.path) for w in chosen)]
    r = subprocess.run(cmd, text=True, capture_output=True)
    sys.stdout.write(r.stdout + r.stderr)
    if r.returncode != 0:
        print(f"pip install failed with exit code {r.returncode}")
        return 1
    env = {**base, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    ok, why = imports_ok(env)
    print("every module fiberlab needs imports" if ok else f"imports still fail: {why}")
    sys.path[:0] = [str(site)]
    importlib.invalidate_caches()
    return report(folder) or (0 if ok else 1)


def _satisfies(have: str, specs: list[str]) -> bool:
    try:
        version = _packaging()[1]
        return all(version.Version(have) in _specifier(s) for s in specs if s)
    except Exception:  # no packaging, or a version it cannot parse: keep what is there
        return True


def report(folder: Path | None) -> int:
    """Print the version of every package reached from pyproject.toml and each unmet specifier (a
    warning: the image's versions were never read here). Returns 0."""
    try:
        _, wanted = requirement_graph(read_wheels(folder) if folder else [])
    except Exception as e:  # noqa: BLE001  (a diagnostic only)
        print(f"requirement report skipped: {type(e).__name__}: {e}")
        return 0
    unmet = []
    lines = []
    for name in sorted(wanted):
        have = installed_version(name)
        specs = sorted({s for _, s in wanted[name] if s})
        lines.append(f"  {name:<22} {have or 'MISSING':<14} {' '.join(specs)}")
        if have is None:
            unmet.append(f"{name} missing (wanted by {', '.join(sorted({b for b, _ in wanted[name]}))})")
        elif not _satisfies(have, specs):
            unmet.append(f"{name} {have} (wanted {', '.join(f'{s} by {b}' for b, s in wanted[name] if s and not _satisfies(have, [s]))})")
    print("packages reached from pyproject.toml (name, installed, wanted):")
    print("\n".join(lines))
    print("unmet: " + ("; ".join(unmet) if unmet else "none"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pins"]:
        print("\n".join(pins()))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        folder = Path(argv[1])
        problems = check(folder)
        wheels = read_wheels(folder)
        for w in sorted(wheels, key=lambda w: -w.path.stat().st_size):
            print(f"  {w.path.stat().st_size / 2**20:6.2f} MiB  {w.path.name}")
        total = sum(w.path.stat().st_size for w in wheels)
        print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in all (limit {MAX_MIB} MiB)")
        for p in problems:
            print(f"PROBLEM: {p}", file=sys.stderr)
        if problems:
            return 1
        print("complete: every requirement reached from pyproject.toml is preinstalled on the GPU machine or carried")
        return 0
    if argv[:1] == ["install"] and len(argv) == 3:
        return install(Path(argv[1]), Path(argv[2]))
    print("usage: gpu_wheels.py pins | check DIR | install DIR SITE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
