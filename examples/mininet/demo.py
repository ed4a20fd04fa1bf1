"""The demo run: network up, switch and controller started, one all-reduce job on every host, summary,
teardown.

Everything started is recorded (node shells, processes by PID, interfaces) and taken down in ``finally``, on
success, on errors and on Ctrl-C alike.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .commands import NetworkError, run_in
from .network import DemoNetwork
from .processes import Managed, ProcessError, ProcessSet, listens, wait_for
from .progress import HostState, JobCounters, ProgressLine
from .reference import digest, reference_result
from .signals import install_handlers, interrupts_ignored
from .switches import TargetSwitch, choose_target, controller_argv, entry_point
from .topology import API_PORT, DemoTopology, controller_config, load, star

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "examples" / "train_ddp.py"
JOB_NAME = "demo"
#: How long the controller gets to connect to the switch, push the pipeline and open its API.
CONTROLLER_START_S = 60.0
PING_TIMEOUT_S = 5.0
#: How often the stats poller asks the controller. Each poll reads the switch's counters over P4Runtime, which
#: costs the softswitch noticeable time (about 20% of the goodput at 0.2 s, measured with 4 hosts).
POLL_INTERVAL_S = 0.5
#: Port of torch.distributed's rendezvous store on the first host (--train).
TRAIN_MASTER_PORT = 29500


class DemoError(RuntimeError):
    """The demo cannot run or a step of it failed; the message says which and what to do."""


@dataclass
class DemoOptions:
    hosts: int = 4
    size: int = 1 << 20
    loss: float = 0.0
    bw: float | None = None
    lanes: int = 256
    window: int | None = None
    iterations: int = 3
    seed: int = 0
    target: str = "auto"
    train: bool = False
    epochs: int = 2
    topology: Path | None = None
    timeout: float = 120.0
    ping: bool = True
    keep_logs: bool = False


def check_environment() -> None:
    """Root and Mininet's helper must be there; say how to get them otherwise."""
    if os.geteuid() != 0:
        raise DemoError("the demo needs root (network namespaces, veth pairs, raw sockets): run it with sudo")
    for tool in ("mnexec", "ip", "ethtool", "tc", "ifconfig"):
        if shutil.which(tool) is None:
            raise DemoError(
                f"`{tool}` is not on PATH: `make install` installs the Debian packages the demo "
                "needs (mininet, iproute2, ethtool, net-tools)"
            )


class Demo:
    """One run of the demo; ``run()`` returns the process exit status."""

    def __init__(self, opts: DemoOptions, out: TextIO | None = None) -> None:
        self.opts = opts
        self.out = out or sys.stdout
        self.topo: DemoTopology = load(opts.topology) if opts.topology else star(opts.hosts)
        self.times: dict[str, float] = {}
        self.job: JobCounters | None = None
        self.switch_drops: dict[str, int] = {}
        self.target_name = ""
        self.switch_cls: type[TargetSwitch] | None = None
        self._stats_offset = 0
        #: The job API's credential: the controller creates this file (mode 0600) and every host reads it (the
        #: hosts share the file system, not the network namespace). Set at bring-up, in the log folder.
        self.token_file = Path()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> int:
        opts = self.opts
        check_environment()
        if opts.train and not TRAIN_SCRIPT.exists():
            raise DemoError(
                "--train is not available: examples/train_ddp.py (the torch DDP example) is missing "
                "from this checkout"
            )
        switch_cls, why = choose_target(opts.target)
        self.target_name = switch_cls.target
        self.switch_cls = switch_cls
        self.say(f"switch: {why}")
        log_dir = Path(tempfile.mkdtemp(prefix="netagg-demo-"))
        self.say(f"logs: {log_dir}")
        procs = ProcessSet(log_dir)
        net = DemoNetwork(self.topo, switch_cls, procs, bw_mbit=opts.bw, seed=opts.seed)
        start = time.monotonic()
        status = 1
        install_handlers()
        try:
            self._bring_up(net, log_dir)
            self.times["setup"] = time.monotonic() - start
            status = self._train(net) if opts.train else self._allreduce(net)
        except KeyboardInterrupt:
            self.say("\ninterrupted: tearing down")
            status = 130
        except (DemoError, ProcessError, NetworkError) as exc:
            self.say(f"error: {exc}")
            status = 1
        finally:
            # Anything else (Mininet reports its failures as bare Exceptions) propagates after the teardown.
            with interrupts_ignored():
                teardown = net.close()
            self.times["total"] = time.monotonic() - start
            if teardown.problems:
                self.say(f"teardown: {teardown.describe()}; problems:\n  " + "\n  ".join(teardown.problems))
                status = status or 1
            else:
                self.say(f"teardown: {teardown.describe()}")
            if status == 0 and not opts.keep_logs:
                shutil.rmtree(log_dir, ignore_errors=True)
            else:
                self.say(f"logs kept in {log_dir}")
            self.say(f"time: {self.times['total']:.1f} s in all")
        return status

    # -- bring-up --------------------------------------------------------------------------------------------

    def _bring_up(self, net: DemoNetwork, log_dir: Path) -> None:
        topo, opts = self.topo, self.opts
        net.build()
        shaping = f", links shaped to {opts.bw:g} Mbit/s" if opts.bw else ""
        self.say(
            f"network: {len(topo.hosts)} hosts on {topo.switch_name} "
            f"({', '.join(f'{h.name} {h.ipv4} port {h.port}' for h in topo.hosts)}){shaping}"
        )
        net.start_switch()
        assert net.switch is not None and net.switch.process is not None
        self.say(
            f"switch: {net.switch.target} pid {net.switch.process.pid}, ports "
            f"{', '.join(f'{p}@{i}' for p, i in net.switch.data_ports().items())}"
        )
        config = log_dir / "controller.toml"
        config.write_text(controller_config(topo, opts.loss))
        self.token_file = log_dir / "controller.token"
        controller = net.procs.start(net.switch, "controller", controller_argv(config, self.token_file, API_PORT))
        wait_for(
            "the controller to push the pipeline and open its job API",
            lambda: listens(controller.pid, API_PORT),
            CONTROLLER_START_S,
            controller,
        )
        loss = f", simulated loss {opts.loss:g} per port and direction" if opts.loss else ""
        self.say(
            f"controller: pid {controller.pid}, job API on port {API_PORT} of every host's management "
            f"link{loss}"
        )
        if opts.ping:
            self._ping(net)

    def _ping(self, net: DemoNetwork) -> None:
        """Every host reaches the first one through the switch (ARP flooding and L2 forwarding work)."""
        first = self.topo.hosts[0]
        if shutil.which("ping") is None:
            self.say("connectivity: not checked (`ping` is not installed: Debian package iputils-ping)")
            return
        for spec in self.topo.hosts[1:]:
            done = run_in(
                net.hosts[spec.name],
                ["ping", "-c", "1", "-W", str(int(PING_TIMEOUT_S)), first.ipv4],
                PING_TIMEOUT_S + 5,
            )
            if done.returncode != 0:
                raise DemoError(
                    f"{spec.name} cannot ping {first.name} ({first.ipv4}) through the switch: "
                    f"{done.stdout.strip().splitlines()[-1:] or done.stderr.strip()}"
                )
        others = len(self.topo.hosts) - 1
        self.say(
            f"connectivity: {others} host{' pings' if others == 1 else 's ping'} {first.name} through the switch"
        )

    # -- the all-reduce job ----------------------------------------------------------------------------------

    def _agent_argv(self, rank: int) -> list[str]:
        opts, spec = self.opts, self.topo.hosts[rank]
        argv = [
            entry_point("netagg-agent"),
            "--controller",
            f"{spec.mgmt_gateway}:{API_PORT}",
            "--token-file",
            str(self.token_file),
            "--job",
            JOB_NAME,
            "--world-size",
            str(len(self.topo.hosts)),
            "--rank",
            str(rank),
            "--size",
            str(opts.size),
            "--lanes",
            str(opts.lanes),
            "--bind",
            spec.ipv4,
            "--seed",
            str(opts.seed),
            "--iterations",
            str(opts.iterations),
            "--check",
            "--json",
        ]
        window = self._window()
        if window is not None:
            argv += ["--window", str(window)]
        return argv

    def _window(self) -> int | None:
        if self.opts.window is not None or self.switch_cls is None:
            return self.opts.window
        return self.switch_cls.default_window

    def _start_poller(self, net: DemoNetwork) -> Managed:
        assert net.switch is not None
        return net.procs.start(
            net.switch,
            "stats",
            [
                sys.executable,
                "-m",
                "examples.mininet.stats_poller",
                "--api-addr",
                f"127.0.0.1:{API_PORT}",
                "--interval",
                str(POLL_INTERVAL_S),
            ],
            env=dict(os.environ, NETAGG_TOKEN_FILE=str(self.token_file)),
            cwd=REPO_ROOT,
        )

    def _allreduce(self, net: DemoNetwork) -> int:
        opts, topo = self.opts, self.topo
        count = opts.size // 4
        chunks = -(-count // opts.lanes) * (
            opts.iterations + 1
        )  # one untimed all-reduce, then the timed ones
        self.say(
            f"job: {len(topo.hosts)} ranks all-reduce {opts.size} bytes of seeded float32 data "
            f"(1 untimed + {opts.iterations} timed, every result checked), {opts.lanes} lanes per packet, window "
            + (str(self._window()) if self._window() is not None else "the agent's default")
            + (f" ({self.target_name}'s default here)" if opts.window is None and self._window() else "")
        )
        poller = self._start_poller(net)
        hosts = [HostState(spec.name) for spec in topo.hosts]
        agents = [
            net.procs.start(net.hosts[spec.name], f"agent-{spec.name}", self._agent_argv(rank))
            for rank, spec in enumerate(topo.hosts)
        ]
        progress = ProgressLine(chunks, self.out)
        started = time.monotonic()
        deadline = started + opts.timeout
        last_shown = 0.0
        try:
            while True:
                self._read_stats(poller)
                for state, agent in zip(hosts, agents, strict=True):
                    _update_host(state, agent, self.job is not None)
                finished = all(h.state in ("done", "failed") for h in hosts)
                now = time.monotonic()
                if finished or now - last_shown >= (POLL_INTERVAL_S if progress.live else 1.0):
                    progress.show(now - started, hosts, self.job)
                    last_shown = now
                if finished:
                    break
                if now > deadline:
                    raise DemoError(
                        f"the job did not finish within --timeout {opts.timeout:g} s; agents' logs "
                        f"are in {net.procs.log_dir}"
                    )
                time.sleep(POLL_INTERVAL_S / 2)
        finally:
            progress.finish()
        self.times["allreduce"] = time.monotonic() - started
        self._read_stats(poller)
        self._final_switch_stats(net)
        return self._summary(hosts)

    def _read_stats(self, poller: Managed) -> None:
        """Take the job's counters from the poller's new lines (the last line that still had the job)."""
        try:
            with poller.log_path.open("rb") as f:
                f.seek(self._stats_offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._stats_offset += end
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            stats = line.get("stats")
            if stats and JOB_NAME in stats.get("jobs", {}):
                self.job = JobCounters.from_stats(stats["jobs"][JOB_NAME])

    def _final_switch_stats(self, net: DemoNetwork) -> None:
        """Switch-wide drop counters: ``netagg-controller stats --json`` in the switch's namespace."""
        assert net.switch is not None
        done = run_in(
            net.switch,
            [entry_point("netagg-controller"), "stats", "--json", "--api-addr", f"127.0.0.1:{API_PORT}",
             "--token-file", str(self.token_file)],
            30,
        )
        if done.returncode != 0:
            self.say(f"warning: netagg-controller stats failed: {done.stderr.strip()}")
            return
        reply = json.loads(done.stdout)
        self.switch_drops = {k: v["packets"] for k, v in reply["switch"]["drops"].items() if v["packets"]}
        if JOB_NAME in reply.get("jobs", {}):
            self.job = JobCounters.from_stats(reply["jobs"][JOB_NAME])

    def _summary(self, hosts: list[HostState]) -> int:
        opts = self.opts
        references: dict[int, str] = {}
        verdicts: list[str] = []
        self.say(
            f"summary: {self.target_name} switch, {len(hosts)} ranks, {opts.size} bytes each, "
            f"loss {opts.loss:g}, bandwidth {f'{opts.bw:g} Mbit/s' if opts.bw else 'unshaped'}"
        )
        self.say(f"  {'host':<6}{'goodput MB/s':>13}{'mean ms':>10}{'retransmits':>13}  result")
        for h in hosts:
            if h.report is None:
                verdicts.append("failed")
                self.say(f"  {h.name:<6}{'-':>13}{'-':>10}{'-':>13}  FAILED: {h.error}")
                continue
            r = h.report
            kind, text = self._verdict(r, int(r.get("lanes", opts.lanes)), references, len(hosts))
            verdicts.append(kind)
            self.say(
                f"  {h.name:<6}{r['goodput_MBps']:>13.2f}{r['mean_seconds'] * 1e3:>10.2f}"
                f"{r['retransmissions']:>13}  {text}"
            )
        if self.job is None:
            self.say(f"switch counters (job {JOB_NAME}): not captured (the job ended before the first poll)")
        else:
            j = self.job
            drops = ", ".join(f"{k} {v}" for k, v in j.drops.items()) or "none"
            self.say(
                f"switch counters (job {JOB_NAME}): {j.aggregated} updates aggregated, {j.completed} chunks "
                f"summed and multicast, {j.retransmit_answered} retransmissions answered; drops: {drops}"
            )
        switch_drops = ", ".join(f"{k} {v}" for k, v in self.switch_drops.items()) or "none"
        self.say(f"switch drops (all traffic): {switch_drops}")
        self.say(
            f"time: set-up {self.times.get('setup', 0):.1f} s, job {self.times.get('allreduce', 0):.1f} s"
        )
        if all(v == "exact" for v in verdicts):
            self.say("result: every host got the reference result, bit for bit")
        elif all(v in ("exact", "bound") for v in verdicts):
            self.say(
                "result: every host's result is within the quantizer's error bound of the exact sum "
                "(not compared bit for bit: the agent does not report a digest of its result)"
            )
        else:
            self.say("result: FAILED (see above)")
            return 1
        return 0

    def _verdict(
        self, report: dict[str, Any], lanes: int, references: dict[int, str], world: int
    ) -> tuple[str, str]:
        """("exact" | "bound" | "failed", text): the host's result against the locally computed reference.

        Bit-exact when the agent reports the SHA-256 of its result (``digest``); otherwise the agent's own
        check against the float64 sum and the quantizer's error bound.
        """
        if "digest" in report:
            if lanes not in references:
                references[lanes] = digest(reference_result(self.opts.seed, world, self.opts.size, lanes))
            if report["digest"] == references[lanes]:
                return "exact", f"bit-exact (sha256 {report['digest'][:12]}...)"
            return (
                "failed",
                f"MISMATCH: sha256 {report['digest'][:12]}... != reference {references[lanes][:12]}...",
            )
        check = report.get("check")
        if check is None:
            return "failed", "not checked (the agent reported neither a digest nor a check)"
        if not check["ok"]:
            return "failed", f"OUTSIDE the quantizer's error bound (max error {check['max_error']:.3g})"
        return "bound", f"within the error bound (max error {check['max_error']:.3g})"

    # -- --train ---------------------------------------------------------------------------------------------

    def _train(self, net: DemoNetwork) -> int:
        topo, opts = self.topo, self.opts
        first = topo.hosts[0]
        self.say(
            f"train: examples/train_ddp.py on {len(topo.hosts)} hosts, DDP over netagg "
            f"(rendezvous on {first.name} {first.ipv4}:{TRAIN_MASTER_PORT})"
        )
        hosts = [HostState(spec.name) for spec in topo.hosts]
        poller = self._start_poller(net)
        runs = []
        for rank, spec in enumerate(topo.hosts):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK="0",
                WORLD_SIZE=str(len(topo.hosts)),
                MASTER_ADDR=first.ipv4,
                MASTER_PORT=str(TRAIN_MASTER_PORT),
                NETAGG_CONTROLLER=f"{spec.mgmt_gateway}:{API_PORT}",
                NETAGG_TOKEN_FILE=str(self.token_file),
                NETAGG_BIND=spec.ipv4,
                # Gloo (the backend's fallback for non-sum collectives) would pick the address the host name
                # resolves to, 127.0.0.1 in every namespace; the data interface is the one the ranks share.
                GLOO_SOCKET_IFNAME=spec.data_intf,
                OMP_NUM_THREADS="1",  # the hosts share the machine's cores
            )
            runs.append(
                net.procs.start(
                    net.hosts[spec.name],
                    f"train-{spec.name}",
                    [
                        sys.executable,
                        str(TRAIN_SCRIPT),
                        "--backend",
                        "netagg",
                        "--seed",
                        str(opts.seed),
                        "--epochs",
                        str(opts.epochs),
                    ],
                    env=env,
                    cwd=REPO_ROOT,
                )
            )
        started = time.monotonic()
        deadline = started + opts.timeout
        progress = ProgressLine(1, self.out)
        shown = 0
        try:
            # One failed rank leaves the others waiting in a collective: stop at the first failure.
            while not all(h.state == "done" for h in hosts) and not any(h.state == "failed" for h in hosts):
                if time.monotonic() > deadline:
                    raise DemoError(f"training did not finish in time; logs in {net.procs.log_dir}")
                self._read_stats(poller)
                for state, proc in zip(hosts, runs, strict=True):
                    _update_trainer(state, proc)
                lines = runs[0].log_path.read_text(errors="replace").splitlines()
                for line in lines[shown:]:
                    progress.finish()
                    self.say(f"  {topo.hosts[0].name}: {line}")
                shown = len(lines)
                time.sleep(POLL_INTERVAL_S)
        finally:
            progress.finish()
        self.times["allreduce"] = time.monotonic() - started
        failed = [h for h in hosts if h.state == "failed"]
        for h in failed:
            self.say(f"  {h.name} FAILED: {h.error}")
        self.say(f"train: {'FAILED' if failed else 'done'} in {self.times['allreduce']:.1f} s")
        return 1 if failed else 0


def _update_host(state: HostState, agent: Managed, job_running: bool) -> None:
    """Move a host's state on from its agent's process and output."""
    if state.state in ("done", "failed"):
        return
    if agent.alive():
        state.state = "running" if job_running else "joining"
        return
    lines = agent.log_path.read_text(errors="replace").splitlines()
    reports = [line for line in lines if line.startswith("{")]
    if agent.popen.returncode == 0 or reports:
        try:
            state.report = json.loads(reports[-1])
        except (IndexError, ValueError):
            state.report = None
    if agent.popen.returncode == 0 and state.report is not None:
        state.state = "done"
    else:
        state.state = "failed"
        messages = [line for line in lines if not line.startswith("{")]
        state.error = f"exit status {agent.popen.returncode}: " + (" | ".join(messages[-3:]) or "no output")


def _update_trainer(state: HostState, proc: Managed) -> None:
    if proc.alive():
        state.state = "running"
    elif proc.popen.returncode == 0:
        state.state = "done"
    else:
        state.state = "failed"
        state.error = f"exit status {proc.popen.returncode}: {proc.log_tail(3)}"
