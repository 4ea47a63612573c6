#!/usr/bin/env python3
"""Time from exec to READY=1 (sd_notify) of a command, RUNS times.

Usage: ready.py RUNS COMMAND... ; "{dir}" in COMMAND is replaced by a fresh
empty directory for each run. Each run binds a datagram socket, starts the
command with NOTIFY_SOCKET pointing at it, waits (30 s at most) for a message
holding READY=1, then stops the command (SIGTERM) and waits for it.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time


def one_run(command):
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(path)
        listener.settimeout(30)
        data = os.path.join(scratch, "data")
        os.mkdir(data)
        argv = [arg.replace("{dir}", data) for arg in command]
        env = dict(os.environ, NOTIFY_SOCKET=path)
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in listener.recv(4096):
                pass
            return (time.monotonic() - started) * 1000
        finally:
            child.terminate()
            child.wait(timeout=30)
            listener.close()


def main():
    runs, command = int(sys.argv[1]), sys.argv[2:]
    took = [one_run(command) for _ in range(runs)]
    print("exec -> READY: " + ", ".join(f"{ms:.1f}" for ms in took) + " ms")


if __name__ == "__main__":
    main()
