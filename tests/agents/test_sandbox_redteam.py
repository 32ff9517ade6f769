"""Escape attempts against the Python sandbox. Each must fail cleanly while the host stays
healthy: the test process is alive, nothing of the run's process group is left, no process
runs as the sandbox's user, and the run's temporary folder is gone.

Most attempts run in the strongest mode this machine allows (`isolation()`); the names say
what is prevented and by what. Attempts that only the namespaces stop are skipped in the
"none" mode, which is a documented weaker guard (tests at the end show what it does catch).
"""

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from ember.agents.sandbox import NOBODY, isolation, run_python

MODE = isolation()
namespaces = pytest.mark.skipif(MODE == "none", reason="no namespaces here: the 'none' mode does not prevent this")


def _nobody_pids() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid == NOBODY:
                pids.add(int(p.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def box():
    """run(code) in the sandbox, then check the host is healthy and nothing is left."""
    before = _nobody_pids()

    def run(code, **kw):
        kw.setdefault("timeout", 3)
        start = time.monotonic()
        r = run_python(textwrap.dedent(code), **kw)
        r.seconds = time.monotonic() - start
        assert not Path(r.folder).exists(), "the temporary folder was left behind"
        with pytest.raises(ProcessLookupError):
            os.killpg(r.pid, 0)  # nothing of its process group is left
        time.sleep(0.05)
        assert _nobody_pids() <= before, "a sandboxed process outlived the run"
        os.kill(os.getpid(), 0)
        return r

    return run


def test_the_sandbox_runs_code_and_captures_output(box):
    r = box("import sys; print(6 * 7); print('warn', file=sys.stderr)")
    assert (r.ok, r.stdout, r.stderr, r.error) == (True, "42\n", "warn\n", None)
    r = box("raise SystemExit('bad input')")
    assert not r.ok and r.error == "bad input"


@namespaces
def test_network_is_unreachable_in_an_empty_network_namespace(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    r = box(f"""
        import socket
        for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
            try:
                socket.create_connection(addr, timeout=1)
                print("CONNECTED", addr)
            except OSError as e:
                print("refused", e.errno)
        socket.getaddrinfo("example.com", 80)
    """)
    assert "CONNECTED" not in r.stdout and r.stdout.count("refused") == 3
    assert not r.ok  # no resolver either
    with pytest.raises(BlockingIOError):
        server.accept()  # the host's listener saw nothing
    server.close()


@namespaces
def test_host_files_are_not_in_the_chroot(box):
    project = Path(__file__).resolve().parents[2] / "pyproject.toml"
    r = box(f"""
        import os
        for path in ["/etc/shadow", "/etc/passwd", {str(project)!r}, "/proc/1/environ", "/root/.bashrc"]:
            try:
                print("READ", path, open(path).read()[:20])
            except OSError as e:
                print("no", type(e).__name__)
        print(sorted(os.listdir("/")))
    """)
    assert "READ" not in r.stdout and r.stdout.count("no ") == 5
    assert "'etc'" not in r.stdout and "'work'" not in r.stdout


@namespaces
def test_writes_outside_the_folder_never_reach_the_host(box, tmp_path):
    target = Path("/tmp") / f"ember-escape-{os.getpid()}"
    r = box(f"""
        for path in [{str(target)!r}, "/usr/escape", {str(tmp_path / 'x')!r}, "/escape"]:
            try:
                open(path, "w").write("escaped")
                print("wrote", path)
            except OSError as e:
                print("no", type(e).__name__)
        open("inside.txt", "w").write("fine")
        print(open("inside.txt").read())
    """)
    assert r.ok and r.stdout.endswith("fine\n")
    assert not target.exists() and not (tmp_path / "x").exists() and not Path("/usr/escape").exists()
    assert not Path("/escape").exists()


def test_environment_secrets_are_not_inherited(box, monkeypatch):
    monkeypatch.setenv("EMBER_FAKE_SECRET", "s3cr3t-value")
    r = box("import os; print(dict(os.environ))")
    assert r.ok and "s3cr3t" not in r.stdout and "EMBER_FAKE_SECRET" not in r.stdout


def test_a_fork_bomb_hits_the_process_limit_and_is_killed(box):
    r = box("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout=2, max_procs=16)
    assert not r.ok and r.timed_out and r.seconds < 5


def test_a_memory_bomb_gets_memory_error(box):
    r = box("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", memory_mb=128)
    assert not r.ok and "MemoryError" in r.error and not r.timed_out


def test_an_infinite_loop_is_killed_at_the_wall_clock_timeout(box):
    r = box("while True:\n    pass", timeout=1)
    assert r.timed_out and not r.ok and "timeout" in r.error and r.seconds < 3


def test_a_sleeping_program_is_killed_at_the_timeout(box):
    r = box("import time; time.sleep(60)", timeout=0.5)
    assert r.timed_out and r.seconds < 2


def test_ignoring_sigterm_does_not_survive_the_timeout(box):
    r = box("""
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    """, timeout=1)
    assert r.timed_out and r.seconds < 3


def test_the_cpu_limit_stops_a_busy_program(box):
    r = box("while True:\n    pass", timeout=10, cpu_seconds=1)
    assert not r.ok and not r.timed_out and "CPU time limit" in r.error and r.seconds < 5


@namespaces
def test_killing_the_parent_fails(box):
    r = box(f"""
        import os, signal
        for pid in (os.getppid(), {os.getpid()}, 1, -1):
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid)
            except OSError as e:
                print("no", pid, type(e).__name__)
        print("alive")
    """)
    # the host's pids do not exist in the PID namespace; PID 1 (the namespace's init) ignores
    # signals it has no handler for, so the script and its init outlive the attempt
    assert f"no {os.getpid()} ProcessLookupError" in r.stdout and r.stdout.endswith("alive\n")
    assert r.ok
    os.kill(os.getpid(), 0)  # still here


@namespaces
def test_a_detached_daemon_dies_with_the_pid_namespace(box):
    r = box("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
            os._exit(0)
        print("parent done")
    """)
    assert r.ok and r.stdout == "parent done\n"  # the fixture checks that no nobody process is left


@namespaces
def test_ctypes_cannot_regain_privileges(box):
    r = box("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("setuid", libc.setuid(0), "chroot", libc.chroot(b".."), "unshare", libc.unshare(0x20000))
        print("uid", os.getuid())
    """)
    assert r.ok and "setuid -1 chroot -1 unshare -1" in r.stdout
    assert MODE != "root" or "uid 65534" in r.stdout


def test_a_ctypes_segfault_ends_cleanly(box):
    r = box("import ctypes; ctypes.string_at(0)")
    assert not r.ok and r.error


@namespaces
def test_mmap_tricks_see_no_host_memory(box):
    r = box("""
        import mmap
        for path in ["/dev/mem", "/dev/kmem", "/proc/self/mem"]:
            try:
                open(path, "rb")
                print("OPENED", path)
            except OSError as e:
                print("no", type(e).__name__)
        m = mmap.mmap(-1, 4096)
        m.write(b"x")
        print("anon ok")
    """)
    assert "OPENED" not in r.stdout and "anon ok" in r.stdout


@namespaces
def test_a_subclasses_walk_reaches_popen_but_not_the_host(box):
    r = box("""
        popen = next(c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "_wrap_close")
        import subprocess
        cls = [c for c in object.__subclasses__() if c.__name__ == "Popen"][0]
        out = cls(["/bin/sh", "-c", "cat /etc/shadow; id -u; ls /"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(out.communicate()[0].decode())
    """)
    assert "root:" not in r.stdout and "etc" not in r.stdout.split()


def test_an_output_flood_is_truncated(box):
    r = box("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)", max_output=1000)
    assert len(r.stdout) < 1100 and "truncated: 100000000 bytes" in r.stdout


def test_a_disk_filler_hits_the_file_size_limit(box):
    r = box("open('big', 'wb').write(b'x' * 20 * 2**20)", file_mb=1)
    assert not r.ok and "File too large" in r.error  # Python ignores SIGXFSZ: the write fails


@namespaces
def test_many_files_fill_only_the_sandbox_tmpfs(box):
    r = box("""
        import os
        for d in (".", "/tmp"):
            try:
                for i in range(100):
                    with open(os.path.join(d, f"f{i}"), "wb") as f:
                        f.write(b"x" * 2**20)
            except OSError as e:
                print(d, "stopped at", i, e.strerror)
    """, disk_mb=8, file_mb=4)
    assert r.ok and r.stdout.count("No space left on device") == 2, r.stdout + r.stderr


@pytest.mark.skipif(MODE != "root", reason="checks the userns mode beside the root one")
def test_the_userns_mode_also_has_no_network_and_no_host_files(box):
    r = box("""
        import os, socket
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1)
        except OSError as e:
            print("net", e.errno)
        print(os.path.exists("/etc/shadow"), os.path.exists("/work"), os.getuid())
    """, mode="userns")
    assert r.ok and r.stdout.startswith("net ") and r.stdout.endswith("False False 0\n")


# ---- the weak guard of the "none" mode (no namespaces) -------------------------------------


def test_none_mode_audit_hook_refuses_sockets_files_and_subprocesses(box, monkeypatch):
    monkeypatch.setenv("EMBER_FAKE_SECRET", "s3cr3t-value")
    r = box("""
        import socket, subprocess
        for attempt in [lambda: socket.socket(), lambda: open("/etc/passwd").read(),
                        lambda: open("/tmp/ember-none-escape", "w"), lambda: subprocess.run(["id"]),
                        lambda: __import__("ctypes").CDLL(None), lambda: __import__("os").kill(1, 0)]:
            try:
                attempt()
                print("ALLOWED")
            except (PermissionError, OSError) as e:
                print("no")
        import os
        print("EMBER_FAKE_SECRET" in os.environ)
    """, mode="none")
    assert r.stdout == "no\n" * 6 + "False\n", r.stdout + r.stderr
    assert not Path("/tmp/ember-none-escape").exists()


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got 0"):
        run_python("print(1)", timeout=0)
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got -1"):
        run_python("print(1)", timeout=-1)
    with pytest.raises(ValueError, match="unknown sandbox mode 'jail'"):
        run_python("print(1)", mode="jail")
    with pytest.raises(ValueError, match="memory_mb must be >= 1"):
        run_python("print(1)", memory_mb=0)


def test_signal_names_in_errors(box):
    r = box("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert not r.ok and "SIGSEGV" in r.error
