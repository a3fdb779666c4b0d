"""`--profile cluster` for real: a one-node SLURM cluster on this machine runs a small study.

The module starts munged, slurmctld and slurmd (Debian/Ubuntu packages slurmctld, slurmd,
slurm-client, munge; SLURM 22.05 tested) with a slurm.conf it writes into a temporary folder, and
runs a small study from a working directory whose ``cluster/config.yaml`` is the repository's
profile with only the changes listed in ``TEST_PROFILE_CHANGES`` (each forced by this node), as a
user would: ``snakemake --cores all --profile cluster <the tables>``. Alongside, the same study runs
locally (``--executor local --cores 2``, same profile otherwise: the same threads and processes per
job). It checks that

* every job went through sbatch: each is in slurmctld's job-completion log under the run's job name,
  in the profile's partition, and the COMPLETED jobs are, rule by rule, the jobs Snakemake planned;
  the GPU rules asked for their GPUs by type (``--gpus=fake:N``) with one CPU per GPU;
* the training rules, given 2 GPUs by the profile, started their two torchrun
  processes inside the allocation: both carry the job's ``SLURM_JOB_ID``, RANK 0 and 1 of
  WORLD_SIZE 2, and the job's 2 GPUs in ``CUDA_VISIBLE_DEVICES``;
* a training job cancelled by the scheduler (``scancel`` after its first checkpoint) is submitted
  again by the profile's ``retries``, none of its processes outlives the cancel, and the new job
  resumes from the checkpoint;
* the final tables equal the local run's, value for value (timing columns aside).

The node is this machine: its CPUs and memory (``slurmd -C``) and two count-only GPUs of type "fake"
(GRES backed by character devices with /dev/null's numbers), so ``--gpus`` is scheduled as on a GPU cluster
while the jobs compute on the CPU (``ACCELERATE_USE_CPU=true`` joins the processes over gloo).
There is no slurmdbd: ``sacct`` answers "Slurm accounting storage is disabled", so the test
profile polls with ``squeue`` (``MinJobAge`` keeps finished jobs visible) and the job-completion
log (``jobcomp/filetxt``) is the record. The SLURM executor's job step drops ``SLURM_CONF`` before
its inner ``srun``, which then finds the config where slurmd's configless mode puts it:
``/run/slurm/conf`` is pointed at the test's folder for the duration (the test needs root, and
refuses to run next to a configured SLURM, i.e. with an /etc/slurm/slurm.conf).

What one CPU node cannot show: NCCL between real GPUs, several nodes, a real accounting database
(sacct, account validation). See the README's cluster section.

Without SLURM installed the module is skipped with the command that enables it; with
``REQUIRE_SLURM=1`` (set by .ci/run) the skip is a failure. Every service is stopped by its pid
at the end, also on failure.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diffusability.workflow import layout
from diffusability.snakemake_output import job_counts

PARTITION = "cpu-test"  # not the default partition: a job reaches it only through the profile's slurm_partition
NODE_GPUS = 2
GPU_TYPE = "fake"  # the node's GPU type; the test profile asks for it as a user names theirs (gpu_model)
CANCEL_TOK = "baseline"  # its train_tokenizer job is cancelled once its first checkpoint is written
TRAINING_RULES = ("train_tokenizer", "train_diffusion")
# columns that time a computation (they differ between any two runs); every other column must be equal
TIMING_COLUMNS = {"seconds"}
ENABLE = ("apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge  "
          "(Debian/Ubuntu, as root; .ci/run does this)")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun", "sinfo")
RUN_SLURM_CONF = Path("/run/slurm/conf")  # where SLURM clients look after SLURM_CONF and /etc/slurm/slurm.conf
TEMP_PREFIX = "diffusability-slurm-"
KEEP = os.environ.get("KEEP_SLURM_TEST_DIR") == "1"  # keep the cluster's folder (logs, both runs) for a look


def _which(binary: str) -> str | None:
    """The daemons live in sbin, which a non-root PATH often lacks."""
    return shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _unavailable() -> str | None:
    """Why a private SLURM cluster cannot be started here, or None."""
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}); to run this test: {ENABLE} "
                "(REQUIRE_SLURM=1 makes this skip a failure)")
    if os.geteuid() != 0:
        return "the SLURM test needs root (slurmd runs the jobs; /run/slurm/conf points at the test's config)"
    if Path("/etc/slurm/slurm.conf").exists():
        return ("/etc/slurm/slurm.conf exists: the job step's inner srun (which drops SLURM_CONF) would "
                "talk to that cluster; run this test on a machine without a configured SLURM")
    if RUN_SLURM_CONF.is_symlink() and TEMP_PREFIX in os.readlink(RUN_SLURM_CONF) \
            and not RUN_SLURM_CONF.exists():
        RUN_SLURM_CONF.unlink()  # left behind by a killed run of this test
    if RUN_SLURM_CONF.exists() or RUN_SLURM_CONF.is_symlink():
        return f"{RUN_SLURM_CONF} exists (a configless slurmd, or another run of this test)"
    return None


def test_profile_retries_and_requeues(repo):
    """The profile resubmits a failed or cancelled job (retries) and lets SLURM requeue one that a
    node failure or preemption ends (--requeue); training resumes from its checkpoints either way."""
    profile = yaml.safe_load((repo / "cluster" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert profile["slurm-requeue"] is True
    assert profile.get("rerun-incomplete") is True


def _cached_rules(repo: Path) -> set[str]:
    """The rules with a `cache:` directive in workflow/rules/*.smk."""
    rules, current = set(), None
    for path in sorted((repo / "workflow" / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            if match := re.match(r"\s*(?:rule|checkpoint)\s+(\w+)\s*:", line):
                current = match.group(1)
            elif re.match(r"\s*cache\s*:", line) and current:
                rules.add(current)
    return rules


def test_profile_enables_the_output_cache(repo, monkeypatch):
    """The profile turns on the between-workflow cache for exactly the rules marked `cache:`, by name, read
    as Snakemake reads the profile. By name because Snakemake hands `--cache` on to a SLURM job, where the
    cache is read and written, only when the list is not empty."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(repo)
    _, args = parse_args(["snakemake", "--profile", "cluster"])
    assert args.cache and set(args.cache) == _cached_rules(repo)


def test_profile_without_a_cache_folder_says_what_to_set(repo, snakemake_exe, tmp_path, monkeypatch):
    """Without SNAKEMAKE_OUTPUT_CACHE the profile's named rules would stop Snakemake on a traceback ("Cache
    backend unavailable"); the workflow stops first, before any job, naming the variable and the README."""
    monkeypatch.delenv("SNAKEMAKE_OUTPUT_CACHE", raising=False)
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    for name in ("Snakefile", "workflow", "cluster"):
        (work / name).symlink_to(repo / name)
    (work / "config" / "config.yaml").write_text((repo / "config" / "config.yaml").read_text())
    result = subprocess.run([snakemake_exe, "--cores", "all", "--profile", "cluster", "-n"], cwd=work,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "export SNAKEMAKE_OUTPUT_CACHE=" in output and "Sharing the artifact cache" in output, output[-3000:]
    assert "Traceback" not in output and "Cache backend unavailable" not in output, output[-3000:]


# ----------------------------------------------------------------------------- the test profile

#: Every change of the test profile against cluster/config.yaml, and why this node forces it.
TEST_PROFILE_CHANGES = {
    "default-resources.slurm_partition (and set-resources.*.slurm_partition where set)":
        f"the test cluster's partition ({PARTITION})",
    "default-resources.slurm_account / set-resources.*.slurm_account": "removed: no accounting database",
    "slurm-no-account": "true: no accounting database to find or validate an account in",
    "slurm-status-command": "squeue: sacct needs slurmdbd",
    "slurm-init-seconds-before-status-checks": "1 instead of 40 s: seconds-long jobs (test time only)",
    "set-threads.*": "1: two CPUs; one-thread jobs run two at a time",
    "set-resources.*.gpu": f"at most {NODE_GPUS}: the node's count-only GPUs",
    "set-resources.*.gpu_model": f"added where gpu is set: the node's GPU type ({GPU_TYPE})",
    "set-resources.*.cpus_per_gpu": "1: two CPUs",
    "set-resources.*.mem_mb": "at most 4000: two jobs side by side on this machine",
}


def derive_test_profile(cluster_profile: dict) -> dict:
    """cluster/config.yaml with the changes of TEST_PROFILE_CHANGES, nothing else."""
    profile = copy.deepcopy(cluster_profile)
    defaults = profile.setdefault("default-resources", {})
    defaults.pop("slurm_account", None)
    defaults["slurm_partition"] = PARTITION
    profile["slurm-no-account"] = True
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 1
    profile["set-threads"] = {rule: 1 for rule in profile.get("set-threads", {})}
    for resources in profile.get("set-resources", {}).values():
        resources.pop("slurm_account", None)
        if "slurm_partition" in resources:
            resources["slurm_partition"] = PARTITION
        if "gpu" in resources:
            resources["gpu"] = min(int(resources["gpu"]), NODE_GPUS)
            resources["gpu_model"] = GPU_TYPE
        if "cpus_per_gpu" in resources:
            resources["cpus_per_gpu"] = 1
        if isinstance(resources.get("mem_mb"), int):
            resources["mem_mb"] = min(resources["mem_mb"], 4000)
    return profile


def test_the_test_profile_changes_only_what_the_node_forces(repo):
    original = yaml.safe_load((repo / "cluster" / "config.yaml").read_text())
    derived = derive_test_profile(original)
    changed = {key for key in set(original) | set(derived) if original.get(key) != derived.get(key)}
    assert changed <= {"default-resources", "set-threads", "set-resources", "slurm-no-account",
                       "slurm-status-command", "slurm-init-seconds-before-status-checks"}
    assert {k: v for k, v in derived["default-resources"].items() if k != "slurm_partition"} == \
        {k: v for k, v in original["default-resources"].items() if k != "slurm_account"}
    for rule, resources in original["set-resources"].items():
        changed_keys = {"gpu", "gpu_model", "cpus_per_gpu", "mem_mb", "slurm_account", "slurm_partition"}
        kept = {k: v for k, v in resources.items() if k not in changed_keys}
        assert {k: v for k, v in derived["set-resources"][rule].items() if k not in changed_keys} == kept, rule
    training = {rule: derived["set-resources"][rule]["gpu"] for rule in TRAINING_RULES}
    assert training == {rule: NODE_GPUS for rule in TRAINING_RULES}  # multi-process training is exercised


# ----------------------------------------------------------------------------- the cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL, to one process this module started."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _wait_for(condition, timeout: float, what: str, logs=(), services=None) -> None:
    """Poll ``condition`` until it holds; raise with the logs' tails on a timeout or a service's death."""
    deadline = time.monotonic() + timeout
    problem = f"timed out after {timeout:.0f} s waiting for {what}"
    while time.monotonic() < deadline:
        if condition():
            return
        dead = [name for name, process in (services or {}).items() if process.poll() is not None]
        if dead:
            problem = f"{', '.join(dead)} exited while waiting for {what}"
            break
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{Path(p).read_text()[-3000:] if Path(p).exists() else '(none)'}" for p in logs)
    raise RuntimeError(f"{problem}\n{tails}")


@dataclass
class Cluster:
    root: Path
    conf: Path
    env: dict
    node: str
    services: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (MinJobAge keeps finished ones): id, name, state, comment."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%k")
        rows = [line.split("|", 3) for line in out.splitlines() if line.strip()]
        return [dict(id=r[0], name=r[1], state=r[2], comment=r[3]) for r in rows]

    def records(self) -> dict[str, dict]:
        """slurmctld's record of every job it still knows (`scontrol show job`), by job id."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if "JobId=" in line]
        return {r["JobId"]: r for r in records}

    def completions(self) -> list[dict]:
        """slurmctld's job-completion log (jobcomp/filetxt), one dict per ended job."""
        path = self.root / "jobcomp.log"
        text = path.read_text() if path.exists() else ""
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def log_tails(self) -> str:
        return "\n".join(f"--- {name}\n{(self.root / name).read_text()[-3000:]}"
                         for name in ("slurmctld.log", "slurmd.log") if (self.root / name).exists())


def _node_line() -> tuple[str, str]:
    """This machine as slurmd sees it (`slurmd -C`): NodeName, CPUs, sockets, cores, RealMemory."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line.split()[0].split("=", 1)[1], line


def _write_config(root: Path, node: str, node_line: str, munge_socket: Path) -> Path:
    etc = root / "etc"
    etc.mkdir()
    conf = etc / "slurm.conf"
    conf.write_text(f"""\
# A one-node SLURM cluster for tests/test_cluster_slurm.py (written by the test).
ClusterName=diffusability-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# every process a job starts is tracked by its parent chain and killed with the job
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# no slurmdbd: sacct is disabled; the job-completion log records every job that ends
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
# finished jobs stay visible to squeue (the profile's status command) for an hour
MinJobAge=3600
KillWait=5
ReturnToService=2
{node_line} NodeAddr=127.0.0.1 Gres=gpu:{GPU_TYPE}:{NODE_GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=NO MaxTime=INFINITE State=UP
""")
    # count-only GPUs: slurmd wants a character device per GPU; these have /dev/null's numbers
    for index in range(NODE_GPUS):
        os.mknod(root / f"gpu{index}", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    (etc / "gres.conf").write_text(f"NodeName={node} Name=gpu Type={GPU_TYPE} File={root}/gpu[0-{NODE_GPUS - 1}]\n")
    return conf


@pytest.fixture(scope="module")
def cluster():
    reason = _unavailable()
    if reason:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(f"REQUIRE_SLURM=1 but: {reason}")
        pytest.skip(reason)
    # munged wants its socket's folder (and every folder above it) searchable by everybody
    root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    root.chmod(0o755)
    for name in ("state", "spool"):
        (root / name).mkdir()
    node, node_line = _node_line()
    munge_socket = root / "munge.socket"
    conf = _write_config(root, node, node_line, munge_socket)
    env = dict(os.environ, SLURM_CONF=str(conf))
    made_run_dir = not RUN_SLURM_CONF.parent.exists()
    cluster = Cluster(root=root, conf=conf, env=env, node=node)
    try:
        key = root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        cluster.services["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", f"--key-file={key}", f"--socket={munge_socket}",
             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=open(root / "munged.err", "w"))
        _wait_for(munge_socket.exists, 30, "munged", [root / "munged.log", root / "munged.err"], cluster.services)
        RUN_SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        RUN_SLURM_CONF.symlink_to(conf.parent)
        cluster.services["slurmctld"] = subprocess.Popen(
            [_which("slurmctld"), "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
            stderr=open(root / "slurmctld.err", "w"))
        cluster.services["slurmd"] = subprocess.Popen(
            [_which("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
            stderr=open(root / "slurmd.err", "w"))

        def node_idle():
            out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], env=env,
                                 capture_output=True, text=True).stdout
            return out.strip() == "idle"

        _wait_for(node_idle, 60, "the node to be idle",
                  [root / "slurmctld.log", root / "slurmd.log", root / "slurmctld.err", root / "slurmd.err"],
                  cluster.services)
        yield cluster
    finally:
        _shut_down(cluster, made_run_dir)


def _shut_down(cluster: Cluster, made_run_dir: bool) -> None:
    """Cancel what is left, stop slurmd, slurmctld and munged by pid, remove what the test made."""
    try:
        if cluster.services.get("slurmctld") and cluster.services["slurmctld"].poll() is None:
            active = cluster.run("squeue", "--noheader", "--format=%i", check=False).split()
            if active:
                cluster.run("scancel", *active, check=False)
                try:
                    _wait_for(lambda: not cluster.run("squeue", "--noheader", "--format=%i", check=False).split(),
                              30, "cancelled jobs to end")
                except RuntimeError:
                    pass
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(cluster.services.get(name))
        if RUN_SLURM_CONF.is_symlink() and os.readlink(RUN_SLURM_CONF) == str(cluster.conf.parent):
            RUN_SLURM_CONF.unlink()
            if made_run_dir:
                try:
                    RUN_SLURM_CONF.parent.rmdir()
                except OSError:
                    pass
        if KEEP:
            print(f"kept {cluster.root} (KEEP_SLURM_TEST_DIR=1)")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


# ----------------------------------------------------------------------------- the study


def small_study(repo) -> dict:
    """config/smoke.yaml with two tokenizers (the fewest a study may have), one backbone, one guidance
    scale; the cancelled tokenizer checkpoints every 2 of its 20 steps, so that it is cancelled well
    before its end."""
    config = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    config["tokenizers"] = {CANCEL_TOK: dict(config["tokenizers"]["baseline"], checkpoint_every=2),
                            "kl-1e-3": config["tokenizers"]["kl-1e-3"]}
    config["sampling"].update(cfg_scales=[1.0], trajectories=0, untrained_baseline=False, num_samples=32,
                              batch_size=32)
    config["metrics"] = {"enabled": ["lnc"], "params": {"lnc": {"k": 3}}}
    config["repeats"] = 1
    return config


# The measured tables (the aggregate rule's). The analysis tables (correlations, predictions) are computed
# from them by the same code wherever it runs; leaving them out saves a round of jobs.
TARGETS = tuple(layout.table(name) for name in ("tokenizers", "reconstruction", "metrics", "generation"))


def _workdir(repo: Path, root: Path, name: str, config: dict, profile: dict) -> Path:
    work = root / name
    (work / "config").mkdir(parents=True)
    (work / "cluster").mkdir()
    (work / "Snakefile").symlink_to(repo / "Snakefile")
    (work / "workflow").symlink_to(repo / "workflow")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "cluster" / "config.yaml").write_text(
        "# cluster/config.yaml with the changes of TEST_PROFILE_CHANGES (tests/test_cluster_slurm.py)\n"
        + yaml.safe_dump(profile, sort_keys=False))
    return work


@dataclass
class Worker:
    """A training process seen in /proc: its job, its torchrun rank, and when it was seen."""
    pid: int
    rule: str
    job: str
    rank: str
    world: str
    gpus: str
    first: float
    last: float


class Watcher(threading.Thread):
    """Every 0.2 s: the training processes of the SLURM run (from /proc), and the one cancel."""

    def __init__(self, cluster: Cluster, work: Path):
        super().__init__(daemon=True)
        self.cluster, self.work = cluster, str(work)
        self.checkpoints = work / Path(layout.tokenizer_file(CANCEL_TOK)).parent / "checkpoints"
        self.workers: dict[int, Worker] = {}
        self.cancelled: dict | None = None
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self._scan()
                if self.cancelled is None:
                    self._cancel_after_first_checkpoint()
            except Exception as exc:  # noqa: BLE001 - reported by the tests, never lost in the thread
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stopping.wait(0.2)

    def _scan(self):
        now = time.monotonic()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"diffusability" not in argv or b"torch.distributed.run" in argv:
                    continue  # only the workers (the torchrun agent has no rank)
                rule = next((r for r in TRAINING_RULES if r.replace("_", "-").encode() in argv), None)
                if rule is None or os.readlink(f"/proc/{pid}/cwd") != self.work:
                    continue
                environ = dict(item.split(b"=", 1) for item in
                               Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
            except OSError:
                continue  # ended meanwhile
            known = self.workers.get(pid)
            if known:
                known.last = now
                continue
            get = lambda name: environ.get(name.encode(), b"").decode()  # noqa: E731
            self.workers[pid] = Worker(pid, rule, get("SLURM_JOB_ID"), get("RANK"), get("WORLD_SIZE"),
                                       get("CUDA_VISIBLE_DEVICES"), now, now)

    def _cancel_after_first_checkpoint(self):
        found = sorted(self.checkpoints.glob("ckpt-*.pt")) if self.checkpoints.is_dir() else []
        if not found:
            return
        comment = f"rule_train_tokenizer_wildcards_{CANCEL_TOK}"
        running = [j["id"] for j in self.cluster.jobs() if j["comment"] == comment and j["state"] == "RUNNING"]
        if running:
            self.cluster.run("scancel", running[0])
            self.cancelled = dict(job=running[0], step=int(found[-1].stem.split("-")[1]), at=time.monotonic())


@dataclass
class Runs:
    cluster: Cluster
    config: dict
    slurm: Path
    local: Path
    slurm_output: str
    local_output: str
    planned: dict
    run_id: str
    profile: dict
    jobs: list
    records: dict
    completions: list
    watcher: Watcher
    seconds: dict


def _fail(message: str, cluster: Cluster, *outputs: str) -> None:
    pytest.fail(message + "\n" + "\n".join(o[-5000:] for o in outputs) + "\n" + cluster.log_tails())


@pytest.fixture(scope="module")
def runs(cluster, repo, snakemake_exe):
    config = small_study(repo)
    profile = derive_test_profile(yaml.safe_load((repo / "cluster" / "config.yaml").read_text()))
    slurm = _workdir(repo, cluster.root, "slurm", config, profile)
    local = _workdir(repo, cluster.root, "local", config, profile)
    env = dict(cluster.env, ACCELERATE_USE_CPU="true")
    commands = {
        "slurm": [snakemake_exe, *TARGETS, "--cores", "all", "--profile", "cluster"],
        # the same study with the same profile, run locally meanwhile: the reference for the tables
        "local": [snakemake_exe, *TARGETS, "--profile", "cluster", "--executor", "local", "--cores", "2"],
    }
    watcher = Watcher(cluster, slurm)
    processes, seconds = {}, {}
    started = time.monotonic()
    try:
        watcher.start()
        for name, work in (("local", local), ("slurm", slurm)):
            # The profile enables the output cache: each run gets its own, empty one, so that every job of
            # both runs executes (a shared cache would let one run take the other's outputs) and the cached
            # rules' outputs go through the cache's store and symlink as on a real cluster.
            cache = cluster.root / f"cache-{name}"
            cache.mkdir()
            with open(cluster.root / f"{name}.out", "w") as out:
                processes[name] = subprocess.Popen(commands[name], cwd=work,
                                                   env=dict(env, SNAKEMAKE_OUTPUT_CACHE=str(cache)), stdout=out,
                                                   stderr=subprocess.STDOUT)
        while len(seconds) < len(processes) and time.monotonic() - started < 1800:
            for name, process in processes.items():
                if name not in seconds and process.poll() is not None:
                    seconds[name] = time.monotonic() - started
            time.sleep(1)
    finally:
        watcher.stopping.set()
        watcher.join(10)
        for process in processes.values():
            _stop(process, timeout=60)  # on SIGTERM the SLURM executor cancels its jobs
    outputs = {name: (cluster.root / f"{name}.out").read_text() for name in processes}
    for name, process in processes.items():
        if name not in seconds or process.returncode != 0:
            _fail(f"the {name} run failed (rc {process.returncode}, {seconds.get(name, 'timed out after 1800')} s)",
                  cluster, outputs[name])
    print(f"wall time: SLURM run {seconds['slurm']:.0f} s, local run {seconds['local']:.0f} s (side by side)")
    run_id = re.search(r"SLURM run ID: (\S+)", outputs["slurm"]).group(1)
    return Runs(cluster, config, slurm, local, outputs["slurm"], outputs["local"], job_counts(outputs["slurm"]),
                run_id, profile, [j for j in cluster.jobs() if j["name"] == run_id], cluster.records(),
                cluster.completions(), watcher, seconds)


def _rule(job: dict) -> str:
    return job["comment"].removeprefix("rule_").split("_wildcards_")[0]


# ----------------------------------------------------------------------------- the checks

slow = pytest.mark.slow


@slow
def test_every_job_went_through_sbatch(runs):
    assert not runs.watcher.errors, runs.watcher.errors
    assert "localrule" not in runs.slurm_output  # nothing ran on the submitting machine
    ended = {c["JobId"]: c for c in runs.completions if c.get("Name") == runs.run_id}
    assert {j["id"] for j in runs.jobs} == set(ended), "a job is missing from the job-completion log"
    assert {c["Partition"] for c in ended.values()} == {PARTITION}
    assert {c["JobState"] for c in ended.values()} == {"COMPLETED", "CANCELLED"}
    completed = [j for j in runs.jobs if ended[j["id"]]["JobState"] == "COMPLETED"]
    counts = {}
    for job in completed:
        counts[_rule(job)] = counts.get(_rule(job), 0) + 1
    assert counts == runs.planned
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", runs.slurm_output)
    assert sorted(submitted) == sorted(ended)
    # the GPU rules asked for the profile's GPUs of the profile's type (--gpus=TYPE:N), with one CPU per GPU
    for job in runs.jobs:
        gpus = runs.profile["set-resources"].get(_rule(job), {}).get("gpu", 0)
        record = runs.records[job["id"]]
        if gpus:
            assert record["TresPerJob"] == f"gres:gpu:{GPU_TYPE}:{gpus}", record
            assert record["NumCPUs"] == str(gpus), record
        else:
            assert record.get("TresPerJob", "") in ("", "(null)"), record


@slow
def test_training_ran_as_two_processes_inside_each_allocation(runs):
    training = [j for j in runs.jobs if _rule(j) in TRAINING_RULES]
    assert len(training) == sum(runs.planned[r] for r in TRAINING_RULES) + 1  # + the cancelled one
    workers = list(runs.watcher.workers.values())
    for job in training:
        mine = [w for w in workers if w.job == job["id"]]
        assert sorted(w.rank for w in mine) == [str(r) for r in range(NODE_GPUS)], (job, mine)
        assert {w.world for w in mine} == {str(NODE_GPUS)}, mine
        assert {w.rule for w in mine} == {_rule(job)}, mine
        assert all(len(w.gpus.split(",")) == NODE_GPUS for w in mine), mine  # the job's GPUs reached both
    assert all(w.job for w in workers), [w for w in workers if not w.job]  # none ran outside an allocation


@slow
def test_a_cancelled_training_job_is_retried_and_resumes(runs):
    cancelled = runs.watcher.cancelled
    assert cancelled is not None, "the training job was not cancelled (no checkpoint seen while it ran)"
    steps = runs.config["tokenizers"][CANCEL_TOK]["steps"]
    assert cancelled["step"] < steps
    comment = f"rule_train_tokenizer_wildcards_{CANCEL_TOK}"
    attempts = [j for j in runs.jobs if j["comment"] == comment]
    ended = {c["JobId"]: c["JobState"] for c in runs.completions}
    attempts.sort(key=lambda j: int(j["id"]))
    assert len(attempts) == 2, attempts
    assert [(j["id"], ended[j["id"]]) for j in attempts] == \
        [(cancelled["job"], "CANCELLED"), (attempts[1]["id"], "COMPLETED")]
    assert "Trying to restart job" in runs.slurm_output  # the profile's retries
    old = [w for w in runs.watcher.workers.values() if w.job == cancelled["job"]]
    new = [w for w in runs.watcher.workers.values() if w.job == attempts[-1]["id"]]
    assert old and new
    assert max(w.last for w in old) < min(w.first for w in new), "a cancelled process outlived its job"
    log = (runs.slurm / "logs" / "train_tokenizer" / f"{CANCEL_TOK}.log").read_text()
    resumed = {int(s) for s in re.findall(r"train_tokenizer: resumed from \S+ \(step (\d+)\)", log)}
    assert resumed and all(cancelled["step"] <= s < steps for s in resumed), log[-3000:]


@slow
def test_cached_jobs_went_through_the_cache(runs):
    """The profile's output cache works inside SLURM jobs: the SLURM run stored one cache entry per output of
    its cached jobs, as the local run did, and its results hold those outputs as links into its cache."""
    entries = {name: sorted(p.name for p in (runs.cluster.root / f"cache-{name}").iterdir())
               for name in ("slurm", "local")}
    assert entries["local"], "the local run cached nothing"
    assert len(entries["slurm"]) == len(entries["local"]), entries
    cache = (runs.cluster.root / "cache-slurm").resolve()
    linked = [p for p in (runs.slurm / "results").rglob("*") if p.is_symlink()]
    assert len(linked) == len(entries["slurm"])
    assert all(p.resolve().parent == cache for p in linked), linked


@slow
def test_tables_equal_a_local_run(runs):
    # the reference trained with the same two processes per training job
    assert runs.local_output.count(f"--nproc_per_node {NODE_GPUS}") == sum(runs.planned[r] for r in TRAINING_RULES)
    for target in TARGETS:
        slurm, local = pd.read_parquet(runs.slurm / target), pd.read_parquet(runs.local / target)
        drop = sorted(TIMING_COLUMNS & set(local.columns))
        assert len(local) > 0, target
        pd.testing.assert_frame_equal(slurm.drop(columns=drop), local.drop(columns=drop), check_exact=True,
                                      obj=target)

