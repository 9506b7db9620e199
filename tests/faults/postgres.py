"""A throwaway PostgreSQL cluster a fault test may stop and start: never the shared one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

from tests.conftest import free_port


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.bin = Path(sorted(glob("/usr/lib/postgresql/*/bin"))[-1])
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="agw-fault-pg-"))
        # PostgreSQL refuses to run as root: then it runs as the system's `postgres` user.
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.data, self.user)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data / "db"), "-U", "postgres", "--auth=trust"]
        subprocess.run(initdb, check=True, capture_output=True, user=self.user)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> ThrowawayPostgres:
        command = [
            str(self.bin / "postgres"),
            *("-D", str(self.data / "db"), "-p", str(self.port), "-k", str(self.data)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, user=self.user
        )
        ready = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"]
        deadline = time.monotonic() + 30
        while subprocess.run(ready).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("throwaway PostgreSQL did not start")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """A fast shutdown: clients are cut off, as in an outage."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast": SIGTERM would wait for every client to leave
            self.process.wait(30)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
