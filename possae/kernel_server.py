"""Serve the build's chapter kernels forked from one process that imported torch, sae_lens and transformer_lens once.

A fresh kernel spends about 7 s importing those before a chapter's first cell computes anything: the same work in
every chapter. During a build (`possae build`), `kernel_server` starts this server, which imports KERNEL_MODULES once,
and shadows the `python3` kernel spec, for the build's own chapters only, with kernel_launcher.py. Each kernel is then a
fork of the server: its own process with its own memory, sockets and environment (the launcher's), that starts with the
modules already imported. Nothing else changes: papermill and jupyter_client start, interrupt and stop it as usual,
and the chapter runs the same code. If the server cannot start, the build runs plain kernels.

The server computes nothing before it forks (no torch operation starts a thread pool), so each kernel sizes its own
pool from its $OMP_NUM_THREADS.

    python -m possae.kernel_server SOCKET_PATH [MODULE ...]   (default KERNEL_MODULES; stops when stdin closes)
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable

# what a chapter's kernel imports before it computes (possae.bytecode compiles the same at install)
KERNEL_MODULES = (
    "sae_lens", "transformer_lens", "possae.oscillation", "possae.matching", "possae.length", "possae.past_context",
    "possae.semantic", "possae.positional", "possae.setup", "possae.ledger", "possae.figures.oscillation",
    "possae.figures.matching", "possae.figures.length", "possae.figures.past_context", "possae.figures.positional",
    "possae.figures.semantic", "possae.figures.setup", "possae.glued", "possae.loaders", "possae.neuronpedia",
    "ipykernel.kernelapp", "myst_nb",
)
SERVER_ENV = "POSSAE_KERNEL_SERVER"  # the server's socket, in the kernel spec's environment
USAGE_ENV = "POSSAE_KERNEL_USAGE"  # where the launcher writes its kernel's CPU time and peak memory
LAUNCHER = Path(__file__).with_name("kernel_launcher.py")
READY = b"ready\n"
START_TIMEOUT_S = 180.0


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """Return a launcher's request (argv, env, cwd) and the standard streams it sent."""
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    while len(head) < 4:
        more = conn.recv(4 - len(head))
        if not more:
            raise ConnectionError("the launcher closed its connection")
        head += more
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ConnectionError("the launcher closed its connection")
        body += more
    return json.loads(body), list(fds)


def _become_kernel(request: dict, fds: list[int], conn: socket.socket, home: str) -> None:
    """In the forked child: take the launcher's streams, directory and environment, and run an IPython kernel."""
    import signal
    import threading

    code = 1
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        # the folder `python -m` put first on the path is the server's; a kernel started from scratch has its own there
        sys.path = [request["cwd"] if entry == home else entry for entry in sys.path]
        os.environ.clear()
        os.environ.update(request["env"])
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))

        def exit_when_the_launcher_goes() -> None:  # it only ever closes its end: then this kernel has no owner
            conn.recv(1)
            os._exit(1)

        threading.Thread(target=exit_when_the_launcher_goes, daemon=True).start()
        from ipykernel.kernelapp import IPKernelApp

        argv = list(request["argv"])
        if os.environ.get("JPY_PARENT_PID", "").isdigit():  # ipykernel read it when the server imported it
            argv.append(f"--IPKernelApp.parent_handle={os.environ['JPY_PARENT_PID']}")
        sys.argv = ["ipykernel_launcher", *argv]
        IPKernelApp.launch_instance(argv=argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)  # not the server's exit handlers: they belong to the server


def serve(path: str, modules: tuple[str, ...] = KERNEL_MODULES) -> None:
    """Import `modules`, listen at `path`, print "ready", and fork a kernel per launcher until stdin closes."""
    import importlib

    home = os.getcwd()
    for name in modules:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    owners: dict[int, socket.socket] = {}  # kernel pid -> its launcher's connection
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([listener, stdin], [], [], 0.1)
        if stdin in readable and not os.read(stdin, 1024):
            break
        if listener in readable:
            conn, _ = listener.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as e:  # a launcher that went away or sent nothing readable: the next one
                with suppress(OSError):
                    conn.sendall(f"error: {e}\n".encode())
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in owners.values():
                    other.close()
                _become_kernel(request, fds, conn, home)
            for fd in fds:
                os.close(fd)
            owners[pid] = conn
            conn.sendall(f"{pid}\n".encode())
        while owners:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = owners.pop(pid, None)
            if conn is not None:
                with_usage = f"{os.waitstatus_to_exitcode(status)} {usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}\n"
                with suppress(OSError):  # a launcher killed meanwhile has no one to tell
                    conn.sendall(with_usage.encode())
                conn.close()


def _wait_ready(proc: subprocess.Popen, timeout: float) -> bool:
    """Return whether the server printed READY within `timeout` seconds (other lines, printed by an import, pass)."""
    deadline = time.monotonic() + timeout
    while select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        line = proc.stdout.readline()
        if line == READY:
            return True
        if not line:  # the server exited
            return False
    return False


@contextmanager
def kernel_server(env: dict[str, str], modules: tuple[str, ...] | None = None, timeout: float = START_TIMEOUT_S,
                  while_starting: Callable[[], None] | None = None):
    """Start a server that imports `modules` (None: KERNEL_MODULES), with the kernels' environment `env`; yield the
    variables under which papermill's `python3` kernels are forked from it ({} when it could not start: then kernels
    start as usual); stop it at the end. `while_starting` runs here while the server imports."""
    modules = KERNEL_MODULES if modules is None else modules
    with tempfile.TemporaryDirectory(prefix="possae-ks-") as folder:  # short: a socket path holds <= 107 bytes
        path = os.path.join(folder, "s")
        proc = subprocess.Popen([sys.executable, "-m", "possae.kernel_server", path, *modules], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        try:
            if while_starting is not None:
                while_starting()
            if not _wait_ready(proc, timeout):
                yield {}
                return
            spec = Path(folder, "kernels", "python3")
            spec.mkdir(parents=True)
            spec.joinpath("kernel.json").write_text(json.dumps({
                "argv": [sys.executable, "-I", "-S", str(LAUNCHER), "-f", "{connection_file}"],
                "display_name": "Python 3", "language": "python", "env": {SERVER_ENV: path}}))
            yield {"JUPYTER_PATH": os.pathsep.join(filter(None, [folder, os.environ.get("JUPYTER_PATH")]))}
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]) or KERNEL_MODULES)
