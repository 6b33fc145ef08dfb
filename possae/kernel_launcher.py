"""The command a chapter's kernel spec runs when the build serves kernels (possae.kernel_server).

It asks the server named by $POSSAE_KERNEL_SERVER for a kernel forked from its pre-imported process, hands it this
process's standard streams, passes on the signals jupyter_client sends (an interrupt, a termination), and exits with
the kernel's status. When $POSSAE_KERNEL_USAGE names a file, it writes the kernel's CPU time and peak memory there.
It runs as `python -I -S kernel_launcher.py -f CONNECTION_FILE ...` and imports only the standard library, so it starts
in milliseconds. If it dies, the kernel notices its closed connection and exits too.
"""

import json
import os
import signal
import socket
import struct
import sys


def main() -> int:
    server = os.environ.get("POSSAE_KERNEL_SERVER", "")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(server)
    except OSError as e:
        print(f"possae kernel launcher: no kernel server at {server!r} ({e}); run the chapter with the python3 kernel "
              "(the build starts the server itself)", file=sys.stderr)
        return 1
    body = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
    conn.sendall(body)
    replies = conn.makefile("rb")
    first = replies.readline().strip()
    if not first.isdigit():
        print(f"possae kernel launcher: the kernel server did not start a kernel ({first!r})", file=sys.stderr)
        return 1
    pid = int(first)

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    last = replies.readline().split()  # exit code, user and system CPU seconds, peak resident kB
    if len(last) != 4:
        return 1
    code, user, system, maxrss = int(last[0]), float(last[1]), float(last[2]), int(last[3])
    usage = os.environ.get("POSSAE_KERNEL_USAGE")
    if usage:
        with open(usage, "w") as f:
            json.dump({"cpu_s": user + system, "peak_rss_mb": maxrss / 1024}, f)
    if code < 0:  # the kernel died of a signal: so does this process
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
