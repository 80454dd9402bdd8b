"""Small C kernels compiled on the machine that runs them, at first use, and cached on disk.

Why C and not numba (which the other CPU loops use, ``cpu_loops.py``): X's acting step needs
16-wide vector registers held across a loop, a shuffle-tree reduction and a vectorised ``exp``;
numba's version of the same kernel ran 3x slower than the two MKL products it was meant to beat
(its ``exp`` is scalar here). A C compiler with the shapes as compile-time constants gives that
control in portable C (GCC/Clang vector extensions), and every Linux machine that builds Python
packages has one (``cc``; ``CC`` overrides it).

How: :func:`load` compiles ``source`` with ``-O3 -march=native -ffast-math`` (then, should that fail
to build or load, without ``-ffast-math``, then without ``-march=native``) into
``$FIBERLAB_KERNEL_CACHE`` (default ``~/.cache/fiberlab/kernels``), under a name hashed from the
source, the constants, the flags, the compiler's version and this CPU's model and flags, so a cache
shared by different machines never hands one a library built for another. The library is written
to a temporary name and renamed, so concurrent processes (Ray workers, torchrun ranks) at worst
compile it twice. Compiling takes about half a second; later processes load it in milliseconds.

Without a working compiler, or with ``FIBERLAB_NATIVE=0``, :func:`load` returns ``None`` (with one
warning per kernel and process when a compile failed) and the caller uses its tensor form: the
same numbers, slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

# tried in order until one builds and loads; -lmvec: glibc's vector math (the vectorised expf)
FLAG_SETS = (
    ("-O3", "-march=native", "-ffast-math", "-fPIC", "-shared", "-lmvec", "-lm"),
    ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-lm"),
    ("-O3", "-fno-math-errno", "-fPIC", "-shared", "-lm"),
)

_lock = threading.Lock()
_loaded: dict[tuple, ctypes._CFuncPtr | None] = {}
_registry: list[Kernels] = []


def enabled() -> bool:
    """False when ``FIBERLAB_NATIVE=0`` (callers then use their tensor forms)."""
    return os.environ.get("FIBERLAB_NATIVE", "1") != "0"


def cache_dir() -> Path:
    """Where compiled libraries are kept: ``$FIBERLAB_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/fiberlab/kernels``."""
    if os.environ.get("FIBERLAB_KERNEL_CACHE"):
        return Path(os.environ["FIBERLAB_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fiberlab" / "kernels"


class Kernels:
    """The compiled ``symbol`` of one C ``source``, one library per shape, for a caller that runs every step.

    ``constants(*shape)`` gives the ``-D`` constants of a shape. :meth:`get` is a dict lookup once a
    shape is loaded: the callers are acting steps, where the ~20 us of building :func:`load`'s key
    (paths, environment) was a measurable share of X's step.
    """

    def __init__(self, source: Path, symbol: str, argtypes: Sequence, constants: Callable[..., dict[str, int | float]]) -> None:
        self.source, self.symbol, self.argtypes, self.constants = source, symbol, tuple(argtypes), constants
        self._fns: dict[tuple, ctypes._CFuncPtr | None] = {}
        _registry.append(self)

    def get(self, *shape: int) -> ctypes._CFuncPtr | None:
        """The function for ``shape``, or None (no compiler, a failed build, or ``FIBERLAB_NATIVE=0``)."""
        if not enabled():
            return None
        try:
            return self._fns[shape]
        except KeyError:
            fn = self._fns[shape] = load(self.source, self.symbol, self.argtypes, self.constants(*shape))
            return fn


def load(source: Path, symbol: str, argtypes: Sequence, defines: dict[str, int | float]) -> ctypes._CFuncPtr | None:
    """The C function ``symbol`` of ``source`` compiled with ``-D`` ``defines``, or None if that cannot be done here.

    Built once per process and shape (then kept in memory), and once per machine (then on disk).
    """
    if not enabled():
        return None
    key = (str(source), symbol, tuple(sorted(defines.items())), os.environ.get("CC", "cc"), str(cache_dir()))
    with _lock:
        if key not in _loaded:
            fn, why = _build(source, symbol, defines)
            if fn is not None:
                fn.restype, fn.argtypes = None, list(argtypes)
            elif why:
                warnings.warn(f"fiberlab: could not compile {source.name} ({why}); using the slower tensor form", RuntimeWarning, stacklevel=3)
            _loaded[key] = fn
        return _loaded[key]


def forget() -> None:
    """Drop the libraries loaded by this process (the next :func:`load` looks at the disk cache again)."""
    with _lock:
        _loaded.clear()
        for kernels in _registry:
            kernels._fns.clear()


def _build(source: Path, symbol: str, defines: dict[str, int | float]) -> tuple[ctypes._CFuncPtr | None, str]:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, f"no C compiler: {os.environ.get('CC', 'cc')!r} not found; set CC"
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return None, f"cannot create the kernel cache {folder}: {err.strerror}; set FIBERLAB_KERNEL_CACHE"
    # what the library depends on besides its flags: the source, the compiler, this CPU
    context = [source.read_text(), *_run([compiler, "--version"])[1].splitlines()[:1], _cpu_fingerprint()]
    why = ""
    for flags in FLAG_SETS:
        args = [f"-D{k}={v}" for k, v in sorted(defines.items())] + list(flags)
        digest = hashlib.sha256("\n".join([*context, *args]).encode()).hexdigest()[:20]
        target = folder / f"{source.stem}_{digest}.so"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            ok, out = _run([compiler, str(source), "-o", tmp, *args])
            if not ok:
                os.unlink(tmp)
                why = (out.strip().splitlines() or ["failed"])[0][:200]
                continue
            os.replace(tmp, target)
        try:
            return getattr(ctypes.CDLL(str(target)), symbol), ""
        except (OSError, AttributeError) as err:  # e.g. built against a vector-math library this machine lacks
            why = str(err)[:200]
    return None, why


def _run(cmd: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    return done.returncode == 0, done.stdout + done.stderr


def _cpu_fingerprint() -> str:
    """This CPU's model and instruction-set flags (a library built with -march=native runs only where they match)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
