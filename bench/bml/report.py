"""The reproduction's note (``bml.md``), its plot (``bml.png``) and raw figures (``bml.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..network.model import gloo_bound_seconds, netagg_bound_seconds
from ..network.report import Summary, machine
from ..network.runners import Point

MIB = 1 << 20
LANES = 256


def bound_seconds(point: Point, settings: dict[str, Any]) -> float:
    """The link-bound time of ``point``: what its busiest card must carry at the link rate."""
    if point.system == "gloo":
        return gloo_bound_seconds(point.size, point.rate_mbit, point.hosts)
    if point.system.startswith("netagg"):
        return netagg_bound_seconds(point.size, point.rate_mbit, point.lanes or LANES)
    k = int(point.system.rsplit(",", 1)[1])  # bml-N,K
    return gloo_bound_seconds(point.size, point.rate_mbit, point.hosts) / k


def rows(points: list[Point], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per size: each system's median (and spread, bound ratio), and the ratios to BML on k cards."""
    bml = settings["bml_system"]
    out = []
    for size in sorted({p.size for p in points}):
        row: dict[str, Any] = {"size": size}
        for p in points:
            if p.size != size:
                continue
            s = Summary.of(p)
            row[p.system] = None if s is None else {
                "median": s.median,
                "low": s.low,
                "high": s.high,
                "of_bound": bound_seconds(p, settings) / s.median,
                "load": f"{p.load_before[0]:.1f}/{p.load_after[0]:.1f}",
                "machine_cores": s.machine_cores,
                "error": p.error,
            }
            if p.error and s is None:
                row[p.system] = {"error": p.error}
        base = row.get(bml)
        for system in settings["systems"]:
            other = row.get(system)
            if system != bml and base and other and "median" in base and "median" in other:
                row[f"{system}/bml"] = other["median"] / base["median"]
        out.append(row)
    return out


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not run"
    if "median" not in entry:
        return f"failed: {entry['error'][:80]}"
    return f"{entry['median']:.2f} ({entry['low']:.2f}-{entry['high']:.2f}), {entry['of_bound']:.2f} of bound"


def table(rws: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    systems = settings["systems"]
    names = settings["names"]
    bml = settings["bml_system"]
    others = [s for s in systems if s != bml]
    head = ["MiB", *(f"{names[s]} s" for s in systems), *(f"{names[s]} / BML" for s in others), "load before/after"]
    align = ["---:"] + ["---"] * len(systems) + ["---:"] * len(others) + ["---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rws:
        ratios = [f"**{r[f'{s}/bml']:.2f}**" if f"{s}/bml" in r else "-" for s in others]
        loads = ", ".join(r[s]["load"] for s in systems if r.get(s) and "load" in r[s])
        cells = [f"{r['size'] / MIB:g}", *(_cell(r.get(s)) for s in systems), *ratios, loads]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def expected(settings: dict[str, Any]) -> list[str]:
    """The paper's expectation and the link-bound ratios, per baseline."""
    n_hosts, k, rate = settings["hosts"], settings["cards"], settings["rate_mbit"]
    size = MIB
    bml = gloo_bound_seconds(size, rate, n_hosts) / k
    ratio = {
        "gloo": gloo_bound_seconds(size, rate, n_hosts) / bml,
        f"bml-{n_hosts},1": gloo_bound_seconds(size, rate, n_hosts) / bml,
        "netagg-softswitch": netagg_bound_seconds(size, rate, LANES) / bml,
    }
    paper = {
        "gloo": f"about {k} (BML takes about 1/k = 1/{k} of the ring's time)",
        f"bml-{n_hosts},1": f"{k} (the same schedule on one card: 1/k of its time on k cards)",
        "netagg-softswitch": "about 1 at k=2 (BML about equal to in-network aggregation)",
    }
    names = settings["names"]
    return [
        f"- {names[s]} / BML: paper {paper[s]}; link-bound ratio {ratio[s]:.2f}"
        for s in settings["systems"]
        if s in ratio
    ]


def plot(rws: list[dict[str, Any]], settings: dict[str, Any], out: Path) -> str | None:
    """Times against size (left) and each baseline's time over BML's (right), next to k; the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rws:
        return None
    names, bml, k = settings["names"], settings["bml_system"], settings["cards"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in settings["systems"]:
        sel = [r for r in rws if r.get(system) and "median" in r[system]]
        left.plot([r["size"] / MIB for r in sel], [r[system]["median"] for r in sel], marker="o", label=names[system])
        if system != bml:
            sel = [r for r in rws if f"{system}/bml" in r]
            right.plot([r["size"] / MIB for r in sel], [r[f"{system}/bml"] for r in sel], marker="o",
                       label=names[system])
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gradient, MiB")
        ax.legend(fontsize=7)
    left.set_yscale("log")
    left.set_ylabel("synchronization time, s (median)")
    left.set_title(f"{settings['hosts']} hosts, {settings['rate_mbit']:g} Mbit/s per card")
    right.axhline(k, color="k", linestyle="--", linewidth=0.8, label=f"paper: ring / BML = k = {k}")
    right.axhline(1.0, color="grey", linewidth=0.6)
    right.set_ylabel("baseline time / BML time")
    right.set_title(f"against {names[bml]}")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bml.png", dpi=110)
    plt.close(fig)
    return "bml.png"


def write(points: list[Point], settings: dict[str, Any], out: Path) -> Path:
    """Write ``bml.json``, ``bml.png`` and ``bml.md`` into ``out``; return the note's path."""
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    (out / "bml.json").write_text(
        json.dumps({"machine": info, "settings": settings, "points": [p.to_json() for p in points]}, indent=1)
    )
    rws = rows(points, settings)
    png = plot(rws, settings, out)
    n_hosts, k = settings["hosts"], settings["cards"]
    md = [
        f"# BML on BCube({settings['n']},{k}) against a ring all-reduce and netagg",
        "",
        f"Generated by `{settings['command']}` (see docs/bml.md). Raw figures: `bml.json`.",
        "",
        f"**Machine:** {info['cores']} cores ({info['cpu'] or 'unknown CPU'}), kernel {info['kernel']}, Python "
        f"{info['python']}, commit {info['commit'] or 'unknown'}; load average at the end "
        f"{'/'.join(f'{v:.1f}' for v in info['load_at_report'])}. Every host's process, the bridges' forwarding "
        "and the softswitch run on these cores.",
        "",
        f"**Networks**, each link shaped on both ends with `{settings['qdisc']}`: BML on "
        f"BCube({settings['n']},{k}) ({n_hosts} hosts, {k} cards each, one Linux bridge per group); "
        f"BML on one card on BCube({n_hosts},1) (the same hosts' count on one bridge, the same transport); "
        f"gloo's ring and netagg (softswitch, {LANES} lanes) on {n_hosts} hosts with one card each on one switch "
        "node (`bench.network`'s star). Every system gets the same rate per card. BML sums int32 gradients "
        "(checked bit-exact on every host against the sum computed from the seeds); gloo sums float32, netagg "
        "quantizes float32 to int32 blocks. Repetitions per point: "
        f"{settings['repeat']}, after one untimed sync; times are the slowest host's, median (min-max); "
        "'of bound' is the link-bound time (the busiest card's bytes in full frames at the link rate) over "
        "the median.",
        "",
        "## Synchronization time",
        "",
        *table(rws, settings),
        "",
        "## Against the paper",
        "",
        *expected(settings),
        "",
    ]
    failed = [p for p in points if p.error]
    if failed:
        md += ["## Failed points", "", *(f"- {p.system}, {p.size / MIB:g} MiB: {p.error}" for p in failed), ""]
    if png:
        md += [f"![{png}]({png})", ""]
    path = out / "bml.md"
    path.write_text("\n".join(md))
    return path
