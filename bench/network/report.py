"""Summaries of the measured points, the markdown report, its PNG plots and the raw JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import cpu_model

from .cpu import load_average
from .model import (
    gloo_bound_seconds,
    netagg_bound_seconds,
    netagg_wire_efficiency,
    speedup_bound,
    time_bound_ratio,
)
from .runners import Point, Rep

MIB = 1 << 20


@dataclass
class Summary:
    """Median and spread of one point's repetitions, with its CPU figures (medians over repetitions)."""

    median: float
    low: float
    high: float
    retransmissions: float
    switch_cores: float | None
    host_cores: float
    host_cores_max: float
    machine_cores: float

    @classmethod
    def of(cls, point: Point) -> Summary | None:
        if not point.reps:
            return None
        seconds = [r.seconds for r in point.reps]

        def med(key: str) -> float:
            return statistics.median(r.cpu.get(key, 0.0) for r in point.reps)

        return cls(
            median=statistics.median(seconds),
            low=min(seconds),
            high=max(seconds),
            retransmissions=statistics.median(r.retransmissions for r in point.reps),
            switch_cores=med("switch") if "switch" in point.reps[0].cpu else None,
            host_cores=med("hosts"),
            host_cores_max=med("hosts_max"),
            machine_cores=med("machine"),
        )


def load(path: Path) -> tuple[list[Point], dict[str, Any]]:
    """Points and settings from a ``results.json`` that ``write`` made."""
    data = json.loads(path.read_text())
    points = []
    for raw in data["points"]:
        raw = dict(raw)
        raw["reps"] = [Rep(**r) for r in raw["reps"]]
        raw["load_before"], raw["load_after"] = tuple(raw["load_before"]), tuple(raw["load_after"])
        points.append(Point(**raw))
    return points, data["settings"]


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = cpu_model()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_report": load_average(),
        "commit": commit,
    }


def _limit(point: Point, s: Summary, bound: float) -> str:
    """What limited a point, from its CPU figures: a process at a full core, a saturated machine, or the link."""
    if bound / s.median >= 0.85:
        return "link"
    own = s.host_cores + (s.switch_cores or 0.0)
    saturated = []
    if s.switch_cores is not None and s.switch_cores >= 0.85:
        saturated.append(f"switch {s.switch_cores:.2f}")
    if s.host_cores_max >= 0.85:
        saturated.append(f"a host {s.host_cores_max:.2f}")
    cores = os.cpu_count() or 1
    if s.machine_cores >= 0.9 * cores:
        saturated.append(f"machine {s.machine_cores:.1f}/{cores}")
    if saturated:
        return f"CPU ({', '.join(saturated)}; its own processes {own:.2f})"
    return f"neither saturated (its own processes {own:.2f} cores)"


def _fmt_time(s: Summary) -> str:
    return f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})"


def _load(p: Point) -> str:
    return f"{p.load_before[0]:.1f}/{p.load_after[0]:.1f}"


def comparison_rows(points: list[Point]) -> list[dict[str, Any]]:
    """One row per (hosts, rate, size) with both systems, for the table and the plots."""
    gloo = {(p.hosts, p.rate_mbit, p.size): p for p in points if p.system == "gloo"}
    rows = []
    for p in points:
        if p.system != "netagg-softswitch" or p.loss:
            continue
        g = gloo.get((p.hosts, p.rate_mbit, p.size))
        ns, gs = Summary.of(p), Summary.of(g) if g else None
        if ns is None or gs is None or g is None:
            continue
        lanes = p.lanes or 256
        bound = netagg_bound_seconds(p.size, p.rate_mbit, lanes)
        rows.append(
            {
                "hosts": p.hosts,
                "rate": p.rate_mbit,
                "size": p.size,
                "netagg": p,
                "gloo": g,
                "ns": ns,
                "gs": gs,
                "speedup": gs.median / ns.median,
                "speedup_bound": speedup_bound(p.hosts, lanes),
                "time_bound_ratio": time_bound_ratio(p.hosts, lanes),
                "netagg_bound": bound,
                "fraction": bound / ns.median,
                "gloo_fraction": gloo_bound_seconds(p.size, p.rate_mbit, p.hosts) / gs.median,
                "limit": _limit(p, ns, bound),
                "gloo_limit": _limit(g, gs, gloo_bound_seconds(p.size, p.rate_mbit, p.hosts)),
            }
        )
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| n | Mbit/s | MiB | gloo s (spread) | netagg s (spread) | gloo/netagg | bound | netagg/its bound "
        "| gloo/its bound | retx gloo / netagg | CPU netagg: switch, hosts (busiest), machine | CPU gloo: hosts "
        "(busiest), machine | queue drops g/n | load g, n | netagg limited by |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|---|---|---|---|",
    ]
    for r in rows:
        ns, gs, p, g = r["ns"], r["gs"], r["netagg"], r["gloo"]
        lines.append(
            f"| {r['hosts']} | {r['rate']:g} | {r['size'] / MIB:g} | {_fmt_time(gs)} | {_fmt_time(ns)} "
            f"| **{r['speedup']:.2f}** | {r['speedup_bound']:.2f} | {r['fraction']:.2f} | {r['gloo_fraction']:.2f} "
            f"| {gs.retransmissions:.0f} / {ns.retransmissions:.0f} "
            f"| {ns.switch_cores or 0:.2f}, {ns.host_cores:.2f} ({ns.host_cores_max:.2f}), {ns.machine_cores:.2f} "
            f"| {gs.host_cores:.2f} ({gs.host_cores_max:.2f}), {gs.machine_cores:.2f} "
            f"| {g.queue_drops} / {p.queue_drops} "
            f"| {_load(g)}, {_load(p)} | {r['limit']} |"
        )
    return lines


def loss_rows(points: list[Point]) -> list[dict[str, Any]]:
    lossy = [p for p in points if p.system == "netagg-softswitch" and p.loss > 0]
    if not lossy:
        return []
    ref = lossy[0]
    base = next(
        (
            p
            for p in points
            if p.system == "netagg-softswitch"
            and not p.loss
            and (p.hosts, p.rate_mbit, p.size) == (ref.hosts, ref.rate_mbit, ref.size)
            and p.reps
        ),
        None,
    )
    rows = []
    base_s = Summary.of(base) if base else None
    for p in ([base] if base else []) + lossy:
        s = Summary.of(p)
        goodput = p.size / s.median / 1e6 if s else 0.0
        rows.append(
            {
                "loss": p.loss,
                "point": p,
                "s": s,
                "goodput": goodput,
                "normalised": (base_s.median / s.median) if (s and base_s) else None,
            }
        )
    return rows


def loss_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| loss per port and direction | time s (spread) | goodput MB/s per host | of lossless | retransmissions "
        "| CPU switch, machine | load |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        s, p = r["s"], r["point"]
        if s is None:
            lines.append(f"| {r['loss'] * 100:g} % | failed: {p.error} | | | | | |")
            continue
        norm = f"{r['normalised']:.2f}" if r["normalised"] is not None else "-"
        lines.append(
            f"| {r['loss'] * 100:g} % | {_fmt_time(s)} | {r['goodput']:.2f} | **{norm}** | {s.retransmissions:.0f} "
            f"| {s.switch_cores or 0:.2f}, {s.machine_cores:.2f} | {_load(p)} |"
        )
    return lines


def other_rows(points: list[Point]) -> list[str]:
    """Points not in the comparison: other targets (BMv2) and failed points."""
    lines = []
    for p in points:
        s = Summary.of(p)
        if p.system == "netagg-bmv2" and s is not None:
            bound = netagg_bound_seconds(p.size, p.rate_mbit, p.lanes or 256)
            lines.append(
                f"- BMv2, n={p.hosts}, {p.rate_mbit:g} Mbit/s, {p.size / MIB:g} MiB, window {p.window}: "
                f"{_fmt_time(s)} s, {bound / s.median:.3f} of the link bound, switch CPU "
                f"{s.switch_cores or 0:.2f}, {s.retransmissions:.0f} retransmissions"
            )
        if p.error:
            lines.append(
                f"- failed: {p.system}, n={p.hosts}, {p.rate_mbit:g} Mbit/s, {p.size / MIB:g} MiB, loss "
                f"{p.loss:g}: {p.error.splitlines()[0]}"
            )
    return lines


def plot(rows: list[dict[str, Any]], lrows: list[dict[str, Any]], out: Path) -> list[str]:
    """PNG plots (speedup vs n, speedup vs link rate, goodput vs loss); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sizes = sorted({r["size"] for r in rows})
    for axis, name, label in (
        ("hosts", "speedup_vs_hosts.png", "hosts n"),
        ("rate", "speedup_vs_rate.png", "link rate, Mbit/s"),
    ):
        other = "rate" if axis == "hosts" else "hosts"
        groups = sorted({(r[other], r["size"]) for r in rows})
        if not rows or len({r[axis] for r in rows}) < 1:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for key, size in groups:
            sel = sorted((r for r in rows if r[other] == key and r["size"] == size), key=lambda r: r[axis])
            unit = "Mbit/s" if other == "rate" else "hosts"
            ax.plot(
                [r[axis] for r in sel],
                [r["speedup"] for r in sel],
                marker="o",
                label=f"{size / MIB:g} MiB, {key:g} {unit}",
            )
        xs = sorted({r[axis] for r in rows})
        if axis == "hosts":
            ax.plot(xs, [speedup_bound(int(x), 256) for x in xs], "k--", label="bound 2(n-1)/n x wire eff.")
        else:
            for n in sorted({r["hosts"] for r in rows}):
                ax.axhline(speedup_bound(n, 256), color="k", linestyle="--", linewidth=0.8)
            ax.plot([], [], "k--", label="bound per n")
        ax.axhline(1.0, color="grey", linewidth=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("gloo time / netagg time")
        ax.set_title(f"netagg speedup over gloo's ring ({', '.join(f'{s / MIB:g}' for s in sizes)} MiB)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    measured = [r for r in lrows if r["normalised"] is not None and r["loss"] > 0]
    if measured:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot([r["loss"] * 100 for r in measured], [r["normalised"] for r in measured], marker="o")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.1)
        ax.axhline(1.0, color="grey", linewidth=0.6)
        ax.axhline(0.7, color="r", linestyle=":", linewidth=0.8, label="target at 1 %: 0.7")
        ax.set_xlabel("drop probability per port and direction, %")
        ax.set_ylabel("goodput / lossless goodput")
        p = measured[0]["point"]
        ax.set_title(f"netagg under loss: n={p.hosts}, {p.rate_mbit:g} Mbit/s, {p.size / MIB:g} MiB")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "goodput_vs_loss.png", dpi=110)
        plt.close(fig)
        written.append("goodput_vs_loss.png")
    return written


def write(
    points: list[Point], settings: dict[str, Any], components: str, out: Path, info: dict[str, Any] | None = None
) -> Path:
    """Write ``results.json``, the plots and ``README.md`` into ``out``; return the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    info = info or machine()
    (out / "results.json").write_text(
        json.dumps(
            {"machine": info, "settings": settings, "components": components, "points": [p.to_json() for p in points]},
            indent=1,
        )
    )
    rows, lrows = comparison_rows(points), loss_rows(points)
    plots = plot(rows, lrows, out)
    lanes = settings.get("lanes", 256)
    md = [
        "# Network benchmark: netagg against gloo's ring all-reduce",
        "",
        f'Generated by `{settings["command"]}` (see docs/benchmarks.md, "Network benchmark"). Raw figures: '
        "`results.json`.",
        "",
        f"**Machine:** {info['cores']} cores ({info['cpu'] or 'unknown CPU'}), kernel {info['kernel']}, Python "
        f"{info['python']}, commit {info['commit'] or 'unknown'}; load average at the end "
        f"{'/'.join(f'{v:.1f}' for v in info['load_at_report'])}. Every process (hosts' agents or gloo ranks, "
        "the switch, the controller) runs on these cores.",
        "",
        f"**Network:** n hosts on one switch node; both ends of every host link shaped with `{settings['qdisc']}`. "
        f"gloo runs over a Linux bridge in the switch node, netagg through {settings['targets']} on the same "
        f"interfaces. netagg: {lanes} lanes per packet, wire efficiency {netagg_wire_efficiency(lanes):.4f} "
        f"(payload over frame bytes). Repetitions per point: {settings['repeat']} (netagg: one job each; gloo: "
        "one process group, timed all-reduces after an untimed one). Times are the slowest rank's, median "
        "(min-max).",
        "",
        "## gloo against netagg",
        "",
        "bound: 2(n-1)/n x netagg's wire efficiency. netagg/its bound: the link-bound time (tensor in frames at "
        "the link rate) over the median; gloo/its bound likewise for 2(n-1)/n of the tensor in full TCP "
        "segments. CPU figures are cores used inside the timed all-reduce (1.0 is a full core): the switch "
        "process, all host processes (the busiest one), the whole machine (other work included). retx: "
        "retransmissions per all-reduce, all hosts (gloo: TCP segments). load: 1-minute load average "
        "before/after.",
        "",
        *comparison_table(rows),
        "",
    ]
    if rows:
        md += [
            "The bound ignores that gloo's TCP segments carry headers too: the ratio of the two link-bound times "
            "is "
            + ", ".join(f"{n}: {time_bound_ratio(n, lanes):.3f}" for n in sorted({r["hosts"] for r in rows}))
            + " (n: ratio).",
            "",
        ]
    if lrows:
        p = lrows[-1]["point"]
        md += [
            f"## Goodput against loss (netagg, n={p.hosts}, {p.rate_mbit:g} Mbit/s, {p.size / MIB:g} MiB)",
            "",
            "The switch's drop simulator drops each packet entering and each leaving every port with the given "
            "probability (the topology's `[[loss]]` section); goodput is the tensor bytes per second of one "
            "host, normalised to the lossless run.",
            "",
            *loss_table(lrows),
            "",
        ]
    others = other_rows(points)
    if others:
        md += ["## Other points", "", *others, ""]
    if plots:
        md += ["## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    if components:
        md += ["## Component benchmarks (`python -m bench`)", "", "```", components.rstrip(), "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path
