"""Run untrusted Python in a separate, confined process.

Each run gets a fresh temporary folder (the script's working directory, deleted after),
a minimal environment (nothing inherited: no secrets), a new session, closed file
descriptors, `python -I -S`, resource limits (CPU seconds, address space, file size,
processes, open files) and a wall-clock timeout after which the whole process group gets
SIGTERM, then SIGKILL. stdout and stderr are captured and truncated (the parent never holds
more than `max_output` bytes of either).

What confines it beyond that depends on the machine (`isolation()` probes once):

- "root" (running as root, namespaces available): no network (an empty network
  namespace), no filesystem beyond read-only /usr and the Python installation (a mount
  namespace and chroot into an empty tmpfs; the working folder and /tmp are tmpfs of
  `disk_mb` each, so nothing written reaches the host's disk), a PID namespace (every process dies with the
  script), uid `nobody`, no_new_privs. See `ember.agents.sandbox_child`.
- "userns" (unprivileged user namespaces): the same namespaces, as the calling user.
- "none": limits only (the working folder is the temporary folder on the host's disk),
  plus an audit hook refusing sockets, ctypes, subprocesses, signals
  and files outside the folder. A determined program can get around an audit hook; use
  this mode only for code you would run anyway.

>>> r = run_python("print(6 * 7)")
>>> r.ok, r.stdout, r.error
(True, '42\\n', None)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("root", "userns", "none")
NOBODY = 65534
_CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass
class SandboxResult:
    """How one run ended."""

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    returncode: int | None
    timed_out: bool
    mode: str
    pid: int = 0
    """The launcher's pid, also the process group that was killed."""
    folder: str = ""
    """The temporary folder of the run (removed when it returns)."""

    def to_json(self) -> dict:
        return {"ok": self.ok, "stdout": self.stdout, "stderr": self.stderr, "error": self.error}


def _python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.cache
def isolation() -> str:
    """The strongest mode that works here: "root", "userns" or "none"."""
    for mode in (("root", "userns") if os.geteuid() == 0 else ("userns",)):
        r = run_python("print('ok')", timeout=20, mode=mode)
        if r.ok and r.stdout == "ok\n":
            return mode
    return "none"


def run_python(code: str, timeout: float = 5.0, *, memory_mb: int = 256, cpu_seconds: int | None = None,
               file_mb: int = 8, disk_mb: int = 64, max_procs: int = 32, max_output: int = 10_000, mode: str | None = None
               ) -> SandboxResult:
    """Run `code` as a script in the sandbox; never raises for what the code does."""
    if not isinstance(code, str):
        raise ValueError(f"code must be a string, got {type(code).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    for name, v in (("memory_mb", memory_mb), ("file_mb", file_mb), ("disk_mb", disk_mb), ("max_procs", max_procs),
                    ("max_output", max_output)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    mode = isolation() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r} (known: {', '.join(MODES)})")
    base = Path(tempfile.mkdtemp(prefix="ember-sandbox-"))
    try:
        workdir, root = base / "box", base / "root"
        workdir.mkdir()
        root.mkdir()
        (workdir / "main.py").write_text(code, encoding="utf-8")
        cfg = {"mode": mode, "python": _python(), "workdir": str(workdir), "root": str(root),
               "ro_paths": sorted({"/usr", os.path.realpath(sys.base_prefix)}),
               "cpu_seconds": cpu_seconds or int(timeout) + 1, "memory_mb": memory_mb, "file_mb": file_mb,
               "disk_mb": disk_mb, "nproc": max_procs + (0 if mode == "root" else _processes_of(os.getuid()))}
        result = _run(cfg, timeout, max_output)
        result.folder = str(base)
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _processes_of(uid: int) -> int:
    # RLIMIT_NPROC counts every process of the real uid, so the caller's own count first
    n = 0
    for p in Path("/proc").iterdir():
        try:
            n += p.name.isdigit() and p.stat().st_uid == uid
        except OSError:
            pass
    return n


def _run(cfg: dict, timeout: float, max_output: int) -> SandboxResult:
    proc = subprocess.Popen(
        [cfg["python"], "-I", "-S", str(_CHILD), json.dumps(cfg)], cwd=cfg["workdir"],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    out, err = _Capture(proc.stdout, max_output), _Capture(proc.stderr, max_output)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # the launcher turns SIGTERM into SIGKILL for the whole namespace; in the "none" mode
        # the launcher is the script itself, and the group's SIGKILL below follows
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=1.0 if cfg["mode"] != "none" else 0.2)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid, signal.SIGKILL)  # whatever is left in the group, in every case
    proc.wait()
    stdout, stderr = out.text(), err.text()
    rc = proc.returncode
    return SandboxResult(ok=rc == 0 and not timed_out, stdout=stdout, stderr=stderr,
                         error=_error(rc, timed_out, timeout, stderr), returncode=rc, timed_out=timed_out,
                         mode=cfg["mode"], pid=proc.pid)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _error(rc: int, timed_out: bool, timeout: float, stderr: str) -> str | None:
    if timed_out:
        return f"timeout: the program ran longer than {timeout:g} s and was killed"
    if rc == 0:
        return None
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else None
    if sig is not None and sig in signal.Signals._value2member_map_:
        name = signal.Signals(sig).name
        why = {"SIGXCPU": "the CPU time limit was reached", "SIGXFSZ": "the file size limit was reached",
               "SIGKILL": "killed (out of memory or a limit)", "SIGSEGV": "segmentation fault"}
        return f"{why.get(name, 'killed by a signal')} ({name})"
    if rc == 125 and stderr.startswith("sandbox setup failed"):
        return stderr.strip().splitlines()[-1]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {rc}"


class _Capture:
    """Drains a pipe on a thread, keeping the first `limit` bytes."""

    def __init__(self, pipe, limit: int):
        self.pipe, self.limit, self.data, self.total = pipe, limit, bytearray(), 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while chunk := self.pipe.read1(65536):
                self.total += len(chunk)
                if len(self.data) < self.limit:
                    self.data += chunk[: self.limit - len(self.data)]
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        deadline = time.monotonic() + 1.0  # a process that escaped the group may hold the pipe
        self.thread.join(max(0.0, deadline - time.monotonic()))
        self.pipe.close()
        text = self.data.decode("utf-8", errors="replace")
        if self.total > self.limit:
            text += f"\n... [truncated: {self.total} bytes in all]"
        return text
