"""``--executor skypilot``: one SkyPilot managed-job task file per cell, and a ``launch.sh`` to submit them.

Nothing runs here and ``sky`` is not imported at import time: this module only writes files. Each
cell becomes ``<cell name>.yaml``, a task that

- asks for ``cpus: "<resources.cpus>+"`` and, when ``resources.gpus > 0``, any one of
  ``resources.accelerators`` (``any_of``); a failed or preempted job is restarted by SkyPilot
  (``resources.job_recovery``: ``EAGER_NEXT_REGION``, up to 3 restarts after errors);
- in ``setup`` makes a Python venv, installs ``torch==2.13.0`` first, then fiberlab from git at the
  commit these files were written from (``FIBERLAB_REPO`` @ ``FIBERLAB_COMMIT``) under the project's
  constraints;
- in ``run`` calls ``fiberlab train RECIPE <the cell's overrides>``. The overrides include
  ``resume=true`` and the run folder, so a restarted job continues from the run's newest checkpoint,
  provided the folder is on storage that outlives the VM: give ``train_dir`` as a bucket URL
  (``s3://bucket/prefix``, ``gs://...``) and it is mounted at :data:`MOUNT_POINT` (``file_mounts``,
  ``MOUNT_CACHED``); any other ``train_dir`` is used as a path on the job's machine as it is.

See docs/sweeps_skypilot.md.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from fiberlab.atomic import write_text_atomic
from fiberlab.errors import BadInput, first_line
from fiberlab.sweep.cells import build_cells, cell_overrides
from fiberlab.sweep.spec import SweepSpec

TORCH = "torch==2.13.0"
PYTHON = "3.11"  # the venv's Python (fiberlab needs >= 3.11; cloud images often ship 3.10)
MOUNT_POINT = "/fiberlab_train"  # where a bucket train_dir is mounted on the job's machine
REPO_PLACEHOLDER = "https://github.com/YOUR-ORG/fiberlab.git"  # written when this checkout has no 'origin'
JOB_RECOVERY = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 3}
SKYPILOT_EXTRA = "pip install -c constraints.txt 'fiberlab[skypilot]'"

TASK_NAME = re.compile(r"^[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ACCELERATOR = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(:[0-9]+(\.[0-9]+)?)?$")  # L4:1, A100-80GB:8, tpu-v2-8

SETUP = """\
set -euo pipefail
if [ "$FIBERLAB_REPO" = "{placeholder}" ]; then
  echo "FIBERLAB_REPO is not set: sky jobs launch --env FIBERLAB_REPO=<git url of fiberlab> ..." >&2
  exit 2
fi
python3 -m pip install -q uv
python3 -m uv venv -q --python "$FIBERLAB_PYTHON" ~/fiberlab-venv
printf '%s\\n' {constraints} > ~/fiberlab-constraints.txt
python3 -m uv pip install -q --python ~/fiberlab-venv/bin/python "{torch}"
REF=""
if [ "$FIBERLAB_COMMIT" != unknown ]; then REF="@$FIBERLAB_COMMIT"; fi
python3 -m uv pip install -q --python ~/fiberlab-venv/bin/python -c ~/fiberlab-constraints.txt "fiberlab[logging] @ git+$FIBERLAB_REPO$REF"
"""

RUN = """\
set -euo pipefail
source ~/fiberlab-venv/bin/activate
{command}
"""


def task_name(sweep: str, cell: str) -> str:
    """The SkyPilot task (managed job) name of a cell: ``<sweep>.<cell>``, with characters a task
    name cannot hold written as ``_``, an ``s-`` in front when it would not start with a letter and
    trailing punctuation dropped. The same sweep and cell always give the same name."""
    name = re.sub(r"[^-_.a-zA-Z0-9]", "_", f"{sweep}.{cell}").rstrip("-_.")
    if not name[:1].isalpha() or not name[:1].isascii():
        name = f"s-{name}"
    if not TASK_NAME.fullmatch(name):  # cannot happen with the rules above; kept as a guard
        raise BadInput(f"sweep {sweep}, cell {cell}: {name!r} is not a valid SkyPilot task name")
    return name


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _source_dir() -> Path:
    return Path(__file__).resolve().parent


def git_commit() -> str:
    """The commit of the checkout fiberlab is imported from (``git rev-parse HEAD``), or ``unknown``."""
    return _git("rev-parse", "HEAD", cwd=_source_dir()) or "unknown"


def git_dirty() -> bool:
    """Whether that checkout has uncommitted changes (which the jobs, installing from git, will not have)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no", cwd=_source_dir()))


def public_repo_url(url: str) -> str:
    """A git URL a fresh cloud machine can ``pip install git+...`` from: no user or token in it (so
    no secret is written into task files) and ``git@host:path`` written as ``https://host/path``
    (the machine has no SSH key)."""
    url = url.strip()
    scp = re.fullmatch(r"[^@/:\s]+@([^:/\s]+):(?!//)(.+)", url)
    if scp:
        return f"https://{scp.group(1)}/{scp.group(2).lstrip('/')}"
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def git_repo_url() -> str:
    """``git remote get-url origin`` of this checkout (made public: :func:`public_repo_url`), or
    :data:`REPO_PLACEHOLDER`, which the task's setup refuses until ``--env FIBERLAB_REPO=...`` is given."""
    url = _git("remote", "get-url", "origin", cwd=_source_dir())
    return public_repo_url(url) if url else REPO_PLACEHOLDER


def _constraints() -> list[str]:
    """The project's constraints (its ``constraints.txt`` when fiberlab runs from a checkout), to be
    written on the job's machine: the installed package does not carry the file."""
    for parent in _source_dir().parents:
        path = parent / "constraints.txt"
        if path.is_file() and (parent / "pyproject.toml").is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            return [ln for ln in lines if ln and not ln.startswith("#")] or [TORCH]
    return [TORCH]


def is_bucket(train_dir: str | Path) -> bool:
    """Whether ``train_dir`` is a bucket URL (``s3://...``, ``gs://...``) to mount rather than a path."""
    return bool(_URL.match(str(train_dir)))


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order given, several-line strings (setup, run) as ``|`` blocks."""


def _str(dumper: Any, data: str) -> Any:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def task_dict(spec: SweepSpec, cell: Any, train_dir: str, *, commit: str, repo: str, constraints: list[str],
              bucket: str | None = None) -> dict[str, Any]:
    """The task of one built cell (``train_dir``: the folder as the job's machine sees it; ``bucket``:
    a bucket URL mounted there)."""
    cfg = cell.config
    resources: dict[str, Any] = {"cpus": f"{spec.resources.cpus}+"}
    if spec.resources.gpus > 0:
        resources["any_of"] = [{"accelerators": acc} for acc in spec.resources.accelerators]
    resources["job_recovery"] = dict(JOB_RECOVERY)  # SkyPilot 0.9.2: a resources field, not a top-level one
    envs = {
        "FIBERLAB_SWEEP": spec.name,
        "FIBERLAB_RUN": cell.name,
        "FIBERLAB_COMMIT": commit,
        "FIBERLAB_REPO": repo,
        "FIBERLAB_PYTHON": PYTHON,
        "WANDB_MODE": cfg.wandb.mode,  # what the run's config says (the trainer only sets it when unset)
    }
    command = shlex.join(["fiberlab", "train", spec.base.recipe, *cell_overrides(spec, cell, train_dir)])
    task: dict[str, Any] = {"name": task_name(spec.name, cell.name), "resources": resources, "envs": envs}
    if bucket:  # MOUNT_CACHED: writes (checkpoints) go to the bucket in the background, renames work
        task["file_mounts"] = {train_dir: {"source": bucket, "mode": "MOUNT_CACHED"}}
    task["setup"] = SETUP.format(placeholder=REPO_PLACEHOLDER, torch=TORCH, constraints=" ".join(shlex.quote(c) for c in constraints))
    task["run"] = RUN.format(command=command)
    return task


def render_task(task: dict[str, Any], header: str) -> str:
    return header + yaml.dump(task, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1_000_000)


def check_accelerators(spec: SweepSpec) -> None:
    """With ``gpus > 0``, ``resources.accelerators`` must name at least one ``NAME[:COUNT]``."""
    if spec.resources.gpus <= 0:
        return
    if not spec.resources.accelerators:
        raise BadInput(f"sweep {spec.name}: resources.gpus is {spec.resources.gpus} but resources.accelerators is empty: name at least one, e.g. ['L4:1']")
    for acc in spec.resources.accelerators:
        if not _ACCELERATOR.fullmatch(acc):
            raise BadInput(f"sweep {spec.name}: bad resources.accelerators entry {acc!r}: NAME or NAME:COUNT such as 'L4:1' is allowed")


def skypilot_installed() -> bool:
    return importlib.util.find_spec("sky") is not None


def check_with_skypilot(path: str | Path) -> None:
    """Load a task file as SkyPilot does (``sky.Task.from_yaml``, which validates it against its
    schema; no cloud credentials needed). A file SkyPilot refuses is one BadInput line naming it;
    without SkyPilot installed, a BadInput naming the extra to install.

    Importing ``sky`` the first time takes about a second and creates ``~/.sky``."""
    path = Path(path)
    if not skypilot_installed():
        raise BadInput(f"{path}: checking a SkyPilot task needs the skypilot extra: {SKYPILOT_EXTRA}")
    if not path.is_file():
        raise BadInput(f"{path}: no such SkyPilot task file")
    import sky

    try:
        sky.Task.from_yaml(str(path))
    except Exception as e:  # noqa: BLE001 - sky raises ValueError, its own config errors, jsonschema and YAML errors
        raise BadInput(f"{path}: SkyPilot refuses this task: {first_line(e, type(e).__name__)}") from None


def write_skypilot(spec: SweepSpec, train_dir: str | Path, out: str | Path | None = None, *,
                   commit: str | None = None, repo: str | None = None) -> Path:
    """Write one SkyPilot task file per cell and ``launch.sh`` (one ``sky jobs launch`` per cell) into
    ``out``; return the path of ``launch.sh``.

    Every cell is built and validated first (:func:`~fiberlab.sweep.cells.build_cells`), so a bad
    spec is one BadInput line and no file is written. ``train_dir`` is where the runs go *as the
    job's machine sees it*: a bucket URL (``s3://bucket/prefix``) is mounted at :data:`MOUNT_POINT`
    through ``file_mounts`` and the runs write there, so a restarted job resumes from its newest
    checkpoint; any other value is used as a path on that machine, as it is.

    ``out`` defaults to ``<train_dir>/<sweep>/skypilot`` (``./skypilot/<sweep>`` for a bucket).
    ``commit`` (default: this checkout's ``git rev-parse HEAD``, ``unknown`` outside git) and
    ``repo`` (default: the ``FIBERLAB_REPO`` environment variable, else ``git remote get-url
    origin``, else :data:`REPO_PLACEHOLDER`) say what fiberlab the jobs install.

    Files are written atomically. When SkyPilot is installed (the ``skypilot`` extra), every task
    file is then loaded with ``sky.Task.from_yaml`` (:func:`check_with_skypilot`) before
    ``launch.sh`` is written; without it that check is skipped silently.
    """
    bucket = str(train_dir) if is_bucket(train_dir) else None
    remote_train_dir = MOUNT_POINT if bucket else str(train_dir)
    cells = build_cells(spec, remote_train_dir)  # validates every cell before anything is written
    check_accelerators(spec)
    if out is None:
        out = Path("skypilot") / spec.name if bucket else Path(train_dir) / spec.name / "skypilot"
    out = Path(out)
    dirty = commit is None and git_dirty()
    commit = commit or git_commit()
    repo = public_repo_url(repo or os.environ.get("FIBERLAB_REPO") or git_repo_url())
    constraints = _constraints()
    header = (f"# SkyPilot task for cell {{cell}} of sweep {spec.name}, written by 'fiberlab sweep run --executor skypilot'.\n"
              f"# Launch with: sky jobs launch -y -n {{name}} {{file}}   (regenerate rather than edit)\n")
    texts = {}
    for cell in cells:
        task = task_dict(spec, cell, remote_train_dir, commit=commit, repo=repo, constraints=constraints, bucket=bucket)
        path = out / f"{cell.name}.yaml"
        texts[task["name"], path] = render_task(task, header.format(cell=cell.name, name=task["name"], file=path.name))
    for (_, path), text in texts.items():
        write_text_atomic(path, text)
    files = list(texts)
    launch = out / "launch.sh"
    if skypilot_installed():
        try:
            for _, path in files:
                check_with_skypilot(path)
        except BadInput:
            launch.unlink(missing_ok=True)  # an older launch.sh must not launch what SkyPilot now refuses
            raise
    where = (f"# The runs write to {bucket}, mounted at {MOUNT_POINT}: a restarted job resumes from its newest checkpoint.\n" if bucket else
             f"# NOTE: train_dir {remote_train_dir} is a path on each job's machine: unless it is persistent storage there,\n"
             f"# a job restarted on a new machine starts its run over (give train_dir as s3://bucket/prefix to mount one).\n")
    lines = [
        "#!/usr/bin/env bash",
        f"# Submit the {len(files)} cells of sweep {spec.name} as SkyPilot managed jobs, one 'sky jobs launch' per cell.",
        f"# fiberlab commit {commit} from {repo}: push it first (the jobs pip install it from git).",
        *(["# WARNING: the checkout had uncommitted changes when this was written: the jobs run the commit without them."] if dirty else []),
        "# FIBERLAB_REPO and WANDB_API_KEY, when set in the shell running this, are passed on to the jobs. Then: sky jobs queue",
        where.rstrip("\n"),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        *(f"sky jobs launch -y -n {name} ${{FIBERLAB_REPO:+--env FIBERLAB_REPO}} ${{WANDB_API_KEY:+--env WANDB_API_KEY}} {shlex.quote(path.name)}"
          for name, path in files),
    ]
    write_text_atomic(launch, "\n".join(lines) + "\n")
    launch.chmod(0o755)
    return launch
