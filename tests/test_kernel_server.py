"""The kernel server (possae.kernel_server): kernels forked from one pre-imported process behave as jupyter_client's
own: they run in the launcher's folder and environment, are interrupted and stopped by it, die with their launcher,
and report their usage. A server that cannot start yields nothing, and the build then starts plain kernels."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from jupyter_client import KernelManager

from possae.kernel_server import SERVER_ENV, USAGE_ENV, kernel_server

LIGHT = ("ipykernel.kernelapp", "json")  # enough to serve a kernel, without the seconds of sae_lens


def _run(kc, code: str, timeout: float = 30) -> tuple[list[str], dict]:
    """Run code in the kernel; return its stream output and the reply's content."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(msg["content"]["ename"])

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return out, reply["content"]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A kernel manager whose python3 kernel is forked from a light kernel server; yields (km, kc, server pid)."""
    monkeypatch.setenv("POSSAE_TEST_MARK", "from the launcher")
    monkeypatch.setenv(USAGE_ENV, str(tmp_path / "usage.json"))
    (tmp_path / "server").mkdir()
    monkeypatch.chdir(tmp_path / "server")
    with kernel_server(dict(os.environ), modules=LIGHT) as extra:
        assert set(extra) == {"JUPYTER_PATH"}
        monkeypatch.setenv("JUPYTER_PATH", extra["JUPYTER_PATH"])
        monkeypatch.chdir(tmp_path)  # the kernel's folder, not the server's
        km = KernelManager(kernel_name="python3")
        assert km.kernel_spec.env[SERVER_ENV].endswith("/s")
        km.start_kernel(extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        launcher = psutil.Process(km.provisioner.process.pid)
        try:
            yield km, kc, launcher
        finally:
            kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def test_a_served_kernel_is_a_fork_of_the_server_in_the_launchers_folder_and_environment(served, tmp_path):
    km, kc, launcher = served
    out, reply = _run(kc, "import os, sys; print(os.getcwd(), os.environ['POSSAE_TEST_MARK'], os.getppid(), "
                          "'ipykernel.kernelapp' in sys.modules, os.path.join(os.getcwd(), 'server') in sys.path, "
                          "os.getcwd() in sys.path, sep='|')")
    assert reply["status"] == "ok"
    cwd, mark, ppid, imported, server_on_path, own_on_path = "".join(out).strip().split("|")
    assert (cwd, mark, imported) == (str(tmp_path), "from the launcher", "True")
    assert (server_on_path, own_on_path) == ("False", "True")  # its own folder on the path, as a kernel from scratch
    assert int(ppid) != launcher.pid and psutil.Process(int(ppid)).cmdline()[1:3] == ["-m", "possae.kernel_server"]
    assert "kernel_launcher.py" in " ".join(launcher.cmdline())
    km.shutdown_kernel()
    usage = json.loads((tmp_path / "usage.json").read_text())  # the launcher reports its kernel's usage on its exit
    assert usage["cpu_s"] > 0 and usage["peak_rss_mb"] > 10


def test_an_interrupt_reaches_the_served_kernel(served):
    km, kc, _ = served
    # stop_on_error=False: otherwise ipykernel aborts a request that reaches it before it has finished handling the
    # error (under load it aborted the next one 4 times in 12 on a served kernel, 0 in 12 on a plain one)
    kc.execute("import time; time.sleep(60)", stop_on_error=False)
    time.sleep(1.0)
    t0 = time.time()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=20)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.time() - t0 < 20
    out, reply = _run(kc, "print(6 * 7)")  # the kernel lives on
    assert out == ["42\n"]


def test_a_served_kernel_dies_with_its_launcher(served):
    km, kc, launcher = served
    out, _ = _run(kc, "import os; print(os.getpid())")
    kernel = psutil.Process(int(out[0]))
    os.kill(launcher.pid, signal.SIGKILL)  # what jupyter_client's kill does to the process it started
    kernel.wait(timeout=20)
    assert not kernel.is_running()


def test_a_server_that_cannot_start_yields_nothing():
    t0 = time.time()
    with kernel_server(dict(os.environ), modules=("possae_no_such_module",)) as extra:
        assert extra == {}
    assert time.time() - t0 < 30


def test_a_kernel_forked_after_torch_was_imported_computes_on_its_own_threads(tmp_path, monkeypatch):
    """The server imports torch but computes nothing, so no thread pool exists before the fork: a kernel sizes its own
    from $OMP_NUM_THREADS and its parallel work completes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.chdir(tmp_path)
    with kernel_server(dict(os.environ), modules=("torch", "ipykernel.kernelapp")) as extra:
        monkeypatch.setenv("JUPYTER_PATH", extra["JUPYTER_PATH"])
        km = KernelManager(kernel_name="python3")
        km.start_kernel(extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            out, reply = _run(kc, "import torch; a = torch.randn(1500, 1500, generator=torch.Generator().manual_seed(0)); "
                                  "print(torch.get_num_threads(), float((a @ a).abs().sum()) > 0, float(a.exp().sum()) > 0)",
                              timeout=60)
            assert reply["status"] == "ok" and out == ["2 True True\n"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
