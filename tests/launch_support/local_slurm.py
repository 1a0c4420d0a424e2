"""A real one-node Slurm cluster (slurmctld + slurmd + munged) in a scratch folder, for tests.

    with LocalSlurm() as slurm:                 # or the `local_slurm` pytest fixture (tests/e2e/conftest.py)
        subprocess.run(["sbatch", "--wait", "-N1", "-n2", "job.sh"], env=slurm.env, check=True)

Follows ../../../shared/notes/slurm-local.md: its own munge key and socket, a minimal `slurm.conf` with
`SlurmctldHost` = this host, `CPUs` = the machine's cores, a `RealMemory` below the machine's, free ports, and
pid / spool / state / log files all in the scratch folder, so nothing in /etc or /var is touched and two
clusters can run side by side. Needs root (slurmd starts jobs as the submitting user) and Debian's
`slurm-wlm` + `munge` packages; `unavailable_reason()` says why not, for `pytest.skip`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "scontrol")


def unavailable_reason() -> str | None:
    """Why a LocalSlurm cannot start here (None when it can)."""
    if os.geteuid() != 0:
        return "LocalSlurm needs root (slurmd runs jobs as the submitting user); run the e2e tier as root as CI does"
    missing = [d for d in DAEMONS + CLIENTS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge"
    return None


def free_port(avoid: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """An unused TCP port on 127.0.0.1 (the kernel's choice), not in `avoid`."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


class LocalSlurm:
    """Context manager: start the cluster, wait until the node is idle, stop the daemons by pid file on exit.

    `env` is os.environ plus `SLURM_CONF` (and the munge socket is named in slurm.conf's AuthInfo), so
    `sbatch` / `srun` / `sinfo` run with `env=slurm.env` talk to this cluster only.
    """

    def __init__(
        self, root: str | os.PathLike | None = None, cpus: int | None = None, start_timeout: float = 30.0
    ):
        # unix socket paths are limited to ~107 bytes, so the default scratch folder is a short one in /tmp
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="lslurm-"))
        self.cpus = cpus or os.cpu_count() or 2
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> LocalSlurm:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._own_root and not exc[0]:
            shutil.rmtree(self.root, ignore_errors=True)

    def _start(self) -> None:
        for d in ("munge", "state", "spool", "log", "jobs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # jobs may read their scripts; munge checks its own folder below
        munge = self.root / "munge"
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = munge / "munge.socket.2"
        subprocess.run(
            [
                _daemon("munged"),
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )
        ctld_port = free_port()
        d_port = free_port({ctld_port})
        self.conf.write_text(self._slurm_conf(ctld_port, d_port))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":  # a test that itself runs inside a Slurm job must not leak that job's env
                del self.env[var]
        # -i: ignore saved state (the folder is fresh anyway); both fork into the background and write pid files
        subprocess.run(
            [_daemon("slurmctld"), "-i", "-f", str(self.conf)],
            check=True,
            env=self.env,
            capture_output=True,
            timeout=30,
        )
        subprocess.run(
            [_daemon("slurmd"), "-f", str(self.conf), "-N", self.host],
            check=True,
            env=self.env,
            capture_output=True,
            timeout=30,
        )
        self._wait_idle()

    def _slurm_conf(self, ctld_port: int, d_port: int) -> str:
        # MinJobAge=4: `sbatch --wait` polls every 2 s only while 2 < MinJobAge / 2 fails, else 2, 8, 32 s, which
        # adds up to 40 s to every test job; finished jobs are still kept until the next purge (>= 4 s).
        # sched/builtin starts a job at submission; backfill waits for its first cycle.
        r = self.root
        mem = max(256, int(_memory_mb() * 0.5))
        return f"""\
# written by tests/launch_support/local_slurm.py
ClusterName=fusionrec-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=4
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            p = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            state = (p.stdout or p.stderr).strip()
            if p.returncode == 0 and state.split() and state.split()[0] == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"Slurm node not idle after {self.start_timeout:.0f}s (sinfo: {state!r})\n{self.logs()}"
        )

    def _stop(self) -> None:
        for pidfile in (
            self.root / "slurmd.pid",
            self.root / "slurmctld.pid",
            self.root / "munge" / "munged.pid",
        ):
            pid = _read_pid(pidfile)
            if pid is None:
                continue
            _terminate(pid)

    # -- helpers -----------------------------------------------------------------------------------------------
    def logs(self, tail: int = 40) -> str:
        """The last lines of each daemon log, for assertion messages."""
        out = []
        for f in sorted((self.root / "log").glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def sbatch_wait(
        self, args: list[str], cwd: str | os.PathLike, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`sbatch --wait ARGS` (blocks until the job ends; its exit code is sbatch's)."""
        return subprocess.run(
            ["sbatch", "--wait", *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _terminate(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
