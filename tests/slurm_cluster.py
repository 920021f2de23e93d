"""A real single-node SLURM cluster for tests: munge + slurmctld + slurmd started by hand, stopped by PID.

Facts this relies on are in ../shared/notes/slurm-single-node.md: no systemd, daemons in foreground modes under
their own sessions, accounting off (so the Snakemake plugin is told to poll `squeue`). The config goes to
/etc/slurm/slurm.conf, because `srun` inside a job step looks there (a `SLURM_CONF` pointing elsewhere does not
reach job steps); any existing file is put back afterwards. State and logs live in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged"]
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (the reason is the message)."""


def ensure_installed() -> None:
    """Install Debian's SLURM and munge packages if missing (needs root and the package registry)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and this user cannot apt-get install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-300:]}")


def _meminfo_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemTotal from /proc/meminfo")


def write_config(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("ctld", "d", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=unitscope-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/ctld
SlurmdSpoolDir={folder}/d
SlurmctldPidFile={folder}/ctld.pid
SlurmdPidFile={folder}/d.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=600
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_meminfo_mib() - 2048} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _munge_works() -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        encoded = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if encoded.returncode == 0:
            return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True, timeout=10).returncode == 0
    return False


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@contextlib.contextmanager
def slurm_cluster(folder: Path, *, start_timeout: float = 60) -> Iterator[dict]:
    """Start munged (unless one already answers), slurmctld and slurmd; yield the env clients need; stop them all."""
    ensure_installed()
    conf = SYSTEM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    backup = conf.read_bytes() if conf.exists() else None
    shutil.copy(write_config(folder), conf)
    env = {key: value for key, value in os.environ.items() if key != "SLURM_CONF"}
    started: list[subprocess.Popen] = []
    try:
        if not _munge_works():
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            for path in (key, Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
                if path.exists():
                    shutil.chown(path, "munge", "munge")
            started.append(
                _start(
                    ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged", "-F"],
                    env,
                    folder / "log" / "munged.out",
                )
            )
            _wait(lambda: _munge_works(), start_timeout, "munged did not answer")
        started.append(_start(["slurmctld", "-D", "-f", str(conf)], env, folder / "log" / "slurmctld.out"))
        started.append(_start(["slurmd", "-D", "-f", str(conf)], env, folder / "log" / "slurmd.out"))
        _wait(
            lambda: _sinfo_state(env) == "idle",
            start_timeout,
            f"the node did not become idle (logs in {folder / 'log'})",
        )
        yield {"env": env, "conf": conf, "pids": [p.pid for p in started], "logs": folder / "log"}
    finally:
        for process in reversed(started):
            _stop(process)
        if backup is None:
            conf.unlink(missing_ok=True)
        else:
            conf.write_bytes(backup)


def _sinfo_state(env: dict) -> str:
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    return result.stdout.strip()


def _wait(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise ClusterUnavailable(message)


def job_states(env: dict) -> dict[str, str]:
    """job id -> state for every job slurmctld still remembers (MinJobAge keeps finished ones)."""
    result = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, timeout=10, check=True
    )
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())
