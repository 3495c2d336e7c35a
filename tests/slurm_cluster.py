"""A real one-node SLURM cluster on this machine, for the Snakemake-on-SLURM test.

Debian's slurm-wlm and munge (installed with apt-get when missing), one munged with a fresh key
on its own socket, one slurmctld and one slurmd with the host's real CPU count and memory
(`slurmd -C`). Everything the daemons write lives under STATE; /etc/slurm/slurm.conf (where
srun inside a job reads it) is written with MARKER and removed again by stop().

    python -m tests.slurm_cluster start   # needs root; prints sinfo
    python -m tests.slurm_cluster stop
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
STATE = Path("/run/psla-slurm-test")
MARKER = "# Written by tests/slurm_cluster.py (PSLA test cluster): removed when the test cluster stops."
PACKAGES = ["slurm-wlm", "munge"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel"]
PIDFILES = {
    "munged": STATE / "munge" / "munged.pid",
    "slurmctld": STATE / "slurmctld.pid",
    "slurmd": STATE / "slurmd.pid",
}
LOGS = {"slurmctld": STATE / "slurmctld.log", "slurmd": STATE / "slurmd.log", "munged": STATE / "munge" / "munged.log"}


class ClusterError(RuntimeError):
    pass


def _ours() -> bool:
    try:
        return CONF.read_text().startswith(MARKER)
    except OSError:
        return False


def unavailable_reason() -> str | None:
    """Why this machine cannot host the test cluster (None when it can, or can after apt-get)."""
    if CONF.exists() and not _ours():
        return f"{CONF} exists and was not written by this test: a real SLURM set-up is not touched"
    if all(shutil.which(b) for b in BINARIES):
        return None if os.geteuid() == 0 else "the SLURM daemons need root"
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and there is no apt-get to install them"
    return None


def install(timeout: float = 600) -> None:
    """apt-get install the packages when a binary is missing (apt-get update first if that fails)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    missing = [b for b in BINARIES if not shutil.which(b)]
    if proc.returncode != 0 or missing:
        raise ClusterError(
            f"{' '.join(cmd)} failed ({proc.returncode}); missing {missing}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )


def _run(cmd: list[str], timeout: float = 30, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=slurm_env(), **kwargs)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log_tails()}")
    return proc


def slurm_env(base: dict | None = None) -> dict:
    """The environment for SLURM clients: /etc/slurm/slurm.conf, whatever SLURM_CONF said."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k != "SLURM_CONF"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(name: str) -> int | None:
    """The pid in NAME's pid file when that process is alive and is NAME."""
    try:
        pid = int(PIDFILES[name].read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == name else None


def _kill(name: str, timeout: float = 15) -> None:
    pid = _alive(name)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.2)


def log_tails(lines: int = 30) -> str:
    out = []
    for name, path in LOGS.items():
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as err:
            tail = [f"({err.strerror})"]
        out.append(f"--- {name} log ({path}), last {lines} lines:\n" + "\n".join(tail))
    return "\n".join(out)


def _node_line() -> tuple[str, str]:
    """(NodeName, 'NodeName=... CPUs=... RealMemory=...') as slurmd -C measures this host."""
    line = _run(["slurmd", "-C"]).stdout.splitlines()[0].strip()
    name = line.split()[0].split("=", 1)[1]
    return name, line


def _write_conf() -> str:
    node, node_line = _node_line()
    conf = f"""{MARKER}
ClusterName=psla-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={STATE / "munge" / "munge.socket.2"}
StateSaveLocation={STATE / "slurmctld"}
SlurmdSpoolDir={STATE / "slurmd"}
SlurmctldPidFile={PIDFILES["slurmctld"]}
SlurmdPidFile={PIDFILES["slurmd"]}
SlurmctldLogFile={LOGS["slurmctld"]}
SlurmdLogFile={LOGS["slurmd"]}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(conf)
    return node


def _start_munge() -> None:
    """munged as user munge, with a fresh key, on its own socket (a system munged is left alone)."""
    home = STATE / "munge"
    home.mkdir(parents=True)
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(home, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    home.chmod(0o755)  # clients must reach the socket; the key itself is 0400
    _run(
        [
            "munged",
            f"--socket={home / 'munge.socket.2'}",
            f"--key-file={key}",
            f"--pid-file={PIDFILES['munged']}",
            f"--log-file={LOGS['munged']}",
            f"--seed-file={home / 'munged.seed'}",
        ],
        user="munge",
        group="munge",
        extra_groups=[],
    )
    _run(["munge", "-n", f"--socket={home / 'munge.socket.2'}"])


def stop() -> None:
    """Cancel the jobs, stop slurmctld, slurmd and munged, remove slurm.conf and the state. Idempotent."""
    ours = _ours()
    if ours and _alive("slurmctld"):
        try:
            jobs = _run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split()
            if jobs:
                _run(["scancel", *jobs], check=False, timeout=10)
                deadline = time.monotonic() + 20
                while (
                    time.monotonic() < deadline
                    and _run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split()
                ):
                    time.sleep(0.5)
            _run(["scontrol", "shutdown"], check=False, timeout=10)
        except subprocess.SubprocessError:
            pass  # an unresponsive slurmctld: the signals below stop it
    for name in ("slurmd", "slurmctld", "munged"):  # by their pid files: only the daemons started here
        _kill(name)
    if ours:
        CONF.unlink()
    shutil.rmtree(STATE, ignore_errors=True)


def start(timeout: float = 90) -> str:
    """Install when needed, write slurm.conf, start the daemons, wait for the node to be idle.
    Returns the node name. Raises ClusterError (with the daemons' log tails) when it does not come up."""
    reason = unavailable_reason()
    if reason:
        raise ClusterError(reason)
    install()
    stop()  # a previous run that was killed before its teardown
    STATE.mkdir(parents=True, mode=0o755)
    _start_munge()
    node = _write_conf()
    for daemon in ("slurmctld", "slurmd"):
        _run([daemon], timeout=30)
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = _run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], check=False, timeout=10)
        state = proc.stdout.strip()
        if proc.returncode == 0 and state == "idle":
            return node
        if state.startswith(("down", "drain")):
            _run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
        time.sleep(0.5)
    raise ClusterError(
        f"node {node} not idle after {timeout:.0f} s (sinfo: {state!r}; "
        f"slurmctld {'up' if _alive('slurmctld') else 'down'}, "
        f"slurmd {'up' if _alive('slurmd') else 'down'})\n{log_tails()}"
    )


def cpus_and_memory() -> tuple[int, int]:
    """The node's CPUs and RealMemory (MB) as slurm.conf declares them."""
    fields = dict(f.split("=", 1) for f in _node_line()[1].split() if "=" in f)
    return int(fields["CPUs"]), int(fields["RealMemory"])


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        start()
        print(_run(["sinfo"]).stdout)
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.exit(__doc__)
