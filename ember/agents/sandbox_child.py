"""The sandbox's launcher: run as `python -I -S sandbox_child.py CONFIG_JSON` by
`ember.agents.sandbox`, it confines itself, then execs Python on the user's script.

Modes (the parent probes which one the machine allows):

- "root": new network, mount and PID namespaces; the root is an empty tmpfs holding only
  read-only, nosuid binds of /usr and the Python installation, /dev/{null,zero,urandom},
  and two small tmpfs, /tmp and the working folder /box (the script copied in); then chroot, drop to `nobody`,
  no_new_privs, and the script runs as PID 1 of its namespace (when it exits, the kernel
  kills every process it left).
- "userns": the same namespaces inside a new user namespace (no root needed); the script
  runs as the unprivileged caller mapped to root inside.
- "none": no kernel isolation; an audit hook (PEP 578) refuses sockets, ctypes, process
  creation, signals and files outside the working folder and the Python installation.
  This is a weak guard: Python code can bypass it (e.g. through a C extension).

Resource limits apply in every mode: CPU seconds, address space, file size, processes,
open files, no core dumps.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NOBODY = 65534
BOX = "/box"

_GUARD = r"""
import os, sys
_box = os.path.realpath(os.getcwd())
_lib = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
def _inside(path, roots):
    p = os.path.realpath(os.fsdecode(path)) if isinstance(path, (str, bytes)) else None
    return p is not None and any(p == r or p.startswith(r + os.sep) for r in roots)
def _hook(event, args):
    if event.startswith(("socket.", "ctypes.", "subprocess.", "os.exec", "os.posix_spawn",
                         "os.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.system")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        if not _inside(args[0], (_box,) + (() if (args[2] or 0) & 3 else _lib)):
            raise PermissionError(f"sandbox: {args[0]!r} is outside the sandbox folder")
sys.addaudithook(_hook)
del _hook
import runpy
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    for fn in ("unshare", "mount", "prctl", "chroot"):
        getattr(libc, fn).restype = ctypes.c_int
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, src, dst, fstype, flags, data=None):
    args = [None if a is None else a.encode() for a in (src, dst, fstype)]
    _check(libc.mount(*args, flags, None if data is None else data.encode()), f"mount {src} on {dst}")


def _bind_ro(libc, src: str, root: str) -> None:
    dst = root + src
    os.makedirs(dst, exist_ok=True)
    _mount(libc, src, dst, None, MS_BIND | MS_REC)
    _mount(libc, None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _build_root(libc, cfg: dict) -> None:
    """An empty tmpfs root with only what Python needs; then chroot into it."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    root = cfg["root"]
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for src in cfg["ro_paths"]:
        if os.path.exists(src):
            _bind_ro(libc, src, root)
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), f"{root}/{name}")
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "urandom"):
        open(f"{root}/dev/{dev}", "w").close()
        _mount(libc, "/dev/" + dev, f"{root}/dev/{dev}", None, MS_BIND)
    os.makedirs(root + "/tmp")
    _mount(libc, "tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_mb']}m,mode=1777")
    # the working folder is a size-limited tmpfs too: nothing written reaches the host's disk
    os.makedirs(root + BOX)
    _mount(libc, "tmpfs", root + BOX, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_mb']}m,mode=755")
    with open(os.path.join(cfg["workdir"], "main.py"), "rb") as src, open(root + BOX + "/main.py", "wb") as dst:
        dst.write(src.read())
    if cfg["mode"] == "root":
        for path in (root + BOX, root + BOX + "/main.py"):
            os.chown(path, NOBODY, NOBODY)
    _check(libc.chroot(root.encode()), "chroot")
    os.chdir(BOX)


def _enter_userns(libc, uid: int, gid: int) -> None:
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID), "unshare")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        with open(path, "w") as f:
            f.write(text)


def _limits(cfg: dict) -> None:
    mb = 1024 * 1024
    for res, value in ((resource.RLIMIT_CPU, cfg["cpu_seconds"]), (resource.RLIMIT_AS, cfg["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, cfg["file_mb"] * mb), (resource.RLIMIT_NPROC, cfg["nproc"]),
                       (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        # CPU: SIGXCPU at the soft limit (the hard one would be a bare SIGKILL)
        resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))


def _exec(cfg: dict, guard: bool) -> None:
    os.closerange(3, 4096)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": BOX if cfg["mode"] != "none" else cfg["workdir"],
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
    argv = [cfg["python"], "-I", "-S"] + (["-c", _GUARD, "main.py"] if guard else ["main.py"])
    os.execve(cfg["python"], argv, env)


def _exit_like(status: int) -> None:
    """Exit as a waited-for child ended: its exit code, or 128 + the signal that killed it."""
    sys.stdout.flush()
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def _launcher(init: int) -> None:
    """Outside the namespaces, as the caller: SIGTERM (the parent's timeout) kills the
    namespace's init, and with it every process of the sandbox; then mirror how it ended."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    _exit_like(status)


def _init(script: int) -> None:
    """PID 1 of the namespace: reap every orphan until the script (PID 2) ends. The script
    is not PID 1 itself because PID 1 ignores signals it has no handler for (SIGXCPU, ...)."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == script:
            _exit_like(status)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    libc = _libc()
    mode = cfg["mode"]
    if mode == "root":
        _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID), "unshare")
    elif mode == "userns":
        _enter_userns(libc, os.getuid(), os.getgid())
    if mode != "none":
        pid = os.fork()  # the child is PID 1 of the new PID namespace
        if pid:
            _launcher(pid)
        _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PDEATHSIG)")
        _build_root(libc, cfg)
    _limits(cfg)
    if mode == "root":
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    if mode != "none":
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        # again after the uid change, which clears it: the launcher's death kills PID 1
        _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PDEATHSIG)")
        script = os.fork()
        if script:
            _init(script)
    _exec(cfg, guard=mode == "none")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        print(f"sandbox setup failed: {e}", file=sys.stderr)
        os._exit(125)
