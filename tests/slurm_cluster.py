"""A throw-away single-node SLURM cluster (munge + slurmctld + slurmd on localhost) for tests.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages (`.ci/run`
installs them). Daemons are started by hand (no systemd) and stopped by the PIDs they wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
PID_FILES = [Path("/run/slurmd.pid"), Path("/run/slurmctld.pid"), Path("/run/munge/munged.pid")]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol")


def available() -> str | None:
    """None if a cluster can be started here, else why not."""
    if os.geteuid() != 0:
        return "needs root to start the SLURM daemons"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}); apt-get install slurmctld slurmd munge"
    return None


def _config() -> str:
    mem_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.75)
    return f"""ClusterName=actlabtest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _stop() -> None:
    for pid_file in PID_FILES:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):  # wait until it is gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


@contextmanager
def slurm_cluster(timeout: float = 60.0):
    """Start the daemons, wait for the node to be idle, yield, stop them by PID."""
    previous_conf = SLURM_CONF.read_text() if SLURM_CONF.exists() else None
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_config())
    for folder in ("/run/munge", "/var/lib/slurm/slurmctld", "/var/lib/slurm/slurmd", "/var/log/slurm"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    try:
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        subprocess.run(["/usr/sbin/slurmctld", "-c", "-i"], check=True)  # -c: no jobs from a previous run
        subprocess.run(["/usr/sbin/slurmd"], check=True)
        deadline = time.time() + timeout
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            if time.time() > deadline:
                raise RuntimeError(f"SLURM node not idle after {timeout}s (state {state!r})")
            time.sleep(0.5)
        yield
    finally:
        _stop()
        if previous_conf is None:
            SLURM_CONF.unlink(missing_ok=True)
        else:
            SLURM_CONF.write_text(previous_conf)
