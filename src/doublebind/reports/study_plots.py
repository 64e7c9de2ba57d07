"""The figures of a study report, drawn from the rows of results.jsonl and the summary
recomputed from them. Every function returns PNG bytes; the report writes them as files."""

from __future__ import annotations

import io
import math
from statistics import fmean

VERDICT_COLORS = {"incriminating": "#7b3294", "capable_benign": "#1a9641", "benign": "#a6d96a",
                  "both_fail": "#d7191c", "no_capability": "#9e9e9e", "inconclusive": "#fdd835",
                  "undefined": "#ffffff"}
VERDICT_SHORT = {"incriminating": "INC", "capable_benign": "CB", "benign": "B", "both_fail": "BF",
                 "no_capability": "NC", "inconclusive": "?", "undefined": "U"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width; constrained layout gives it its own band
    above the panel titles, so the two never overlap."""
    import textwrap

    fig.suptitle(textwrap.fill(text, width=max(40, int(fig.get_figwidth() * 13))), fontsize=10)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _nan(x) -> float:
    return float("nan") if x is None else x


def _per_step(rows: list[dict], fn) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, min and max over runs of fn(row) at each step (None values left out)."""
    steps = sorted({r["step"] for r in rows})
    mean, lo, hi = [], [], []
    for s in steps:
        vs = [v for r in rows if r["step"] == s and (v := fn(r)) is not None]
        mean.append(fmean(vs) if vs else float("nan"))
        lo.append(min(vs) if vs else float("nan"))
        hi.append(max(vs) if vs else float("nan"))
    return steps, mean, lo, hi


def _transfer_panel(ax, rows: list[dict], marks: dict | None = None) -> None:
    for key, color, label in [("capability_transfer", "tab:blue", "capability transfer"),
                              ("misalignment_transfer", "crimson", "misalignment transfer")]:
        steps, mean, lo, hi = _per_step(rows, lambda r: r[key])
        ax.plot(steps, mean, "o-", color=color, label=label, ms=3)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    if rows and all(r.get("auditor") for r in rows):
        k = rows[0]["auditor"]["budget"]
        steps, mean, _, _ = _per_step(rows, lambda r: r["auditor"]["success_at_k"])
        ax.plot(steps, mean, "s--", color="tab:orange", label=f"audit success@{k}", ms=3)
    for s in sorted({r["step"] for r in rows if r["selected"]}):
        ax.axvline(s, color="grey", lw=0.6, ls=":")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axhline(1, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step")


def _panel_grid(plt, n: int, max_cols: int, width: float, height: float, extra: float = 0.0, **kw):
    """A figure of `n` panels, at most `max_cols` a row; returns it and the n axes in reading
    order (the unused cells of the last row are turned off)."""
    ncols = min(max_cols, max(1, n))
    nrows = math.ceil(max(1, n) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + extra), squeeze=False,
                             layout="constrained", **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def plot_curves(rows: list[dict], techniques: list[str], scenario: str) -> bytes:
    """One panel per technique of one scenario: mean over runs and min-max band of both
    transfers per step, and (embedded world) the auditor's mean success@k."""
    plt = _plt()
    fig, axes = _panel_grid(plt, len(techniques), 4, 3.8, 3.0, 0.8, sharey=True)
    for i, (t, ax) in enumerate(zip(techniques, axes)):
        trows = [r for r in rows if r["technique"] == t]
        _transfer_panel(ax, trows)
        ax.set_title(f"{t} ({len({(r['organism_seed'], r['seed']) for r in trows})} runs)", fontsize=9)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("transfer")
        if i == 0:
            ax.legend(loc="best", fontsize=7)
    _suptitle(fig, f"{scenario}: transfer over training (line: mean over runs; band: min-max; dashed: audit "
                 f"success@k; dotted: delivered checkpoints)")
    return _png(fig)


def _audit_capability_panel(ax, rows: list[dict], label_runs: bool = False) -> None:
    """Audit success@k against capability transfer along training, one line per run."""
    runs: dict = {}
    for r in rows:
        runs.setdefault((r["organism_seed"], r["seed"]), []).append(r)
    for i, (key, rs) in enumerate(sorted(runs.items())):
        rs = sorted(rs, key=lambda r: r["step"])
        x = [_nan(r["capability_transfer"]) for r in rs]
        y = [r["auditor"]["success_at_k"] for r in rs]
        ax.plot(x, y, "-", color="tab:blue", alpha=0.35, lw=0.8)
        ax.scatter(x, y, c=[r["step"] for r in rs], cmap="viridis", s=10, zorder=3)
        final = next((r for r in rs if r["selected"]), rs[-1])
        ax.scatter([_nan(final["capability_transfer"])], [final["auditor"]["success_at_k"]], marker="x",
                   color="black", s=25, zorder=4, label="delivered checkpoint" if i == 0 else None)


def plot_audit_capability(rows: list[dict], techniques: list[str], scenario: str, success: float,
                          capability: float) -> bytes:
    """Per technique: the behaviour-agnostic auditor's success@k against capability transfer
    at every checkpoint of every run (colour: step). Distill-and-audit lives in the window
    right of the capability line and below the audit line."""
    plt = _plt()
    techniques = [t for t in techniques if any(r["technique"] == t and r.get("auditor") for r in rows)]
    fig, axes = _panel_grid(plt, len(techniques), 4, 3.6, 3.0, 0.8, sharey=True)
    for i, (t, ax) in enumerate(zip(techniques, axes)):
        _audit_capability_panel(ax, [r for r in rows if r["technique"] == t])
        ax.axhline(success, color="grey", ls="--", lw=0.8)
        ax.axvline(capability, color="grey", ls="--", lw=0.8)
        ax.set_title(t, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("audit success@k")
        ax.set_xlabel("capability transfer")
        if i == 0:
            ax.legend(loc="best", fontsize=7)
    _suptitle(fig, f"{scenario}: audit success@k against capability along training (one line per run, colour: "
                 f"step; x: delivered; dashed: thresholds)")
    return _png(fig)


def plot_technique(rows: list[dict], technique: str, scenario: str, success: float, capability: float) -> bytes:
    """The figure a verdict cell links to: transfer curves, and audit success@k against capability."""
    plt = _plt()
    generic = bool(rows) and all(r.get("auditor") for r in rows)
    fig, axes = plt.subplots(1, 2 if generic else 1, figsize=(10 if generic else 5.5, 3.8), squeeze=False,
                             layout="constrained")
    _transfer_panel(axes[0][0], rows)
    axes[0][0].set_title("transfer over training", fontsize=9)
    axes[0][0].set_ylabel("transfer")
    axes[0][0].legend(loc="best", fontsize=7)
    if generic:
        ax = axes[0][1]
        _audit_capability_panel(ax, rows)
        ax.axhline(success, color="grey", ls="--", lw=0.8)
        ax.axvline(capability, color="grey", ls="--", lw=0.8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("capability transfer")
        ax.set_ylabel("audit success@k")
        ax.set_title("audit success@k against capability (colour: step)", fontsize=9)
        ax.legend(loc="best", fontsize=7)
    _suptitle(fig, f"{technique} on {scenario} ({len({(r['organism_seed'], r['seed']) for r in rows})} runs)")
    return _png(fig)


def plot_heatmap(summary: dict, power: float | None = None, rising: frozenset = frozenset(),
                 idle: dict | None = None) -> bytes:
    """Verdicts, scenario x technique, at the final and at the audit-selected checkpoint; a
    verdict whose estimated replication probability is below `power` is marked *, a
    delivered one in `rising` ((scenario, technique) pairs) ↑, and one whose technique changed
    nothing in every run (`idle`: (scenario, technique) -> (k, n), `idle_cells`) ∅, in some
    of them (∅), as in the report's tables."""
    idle = idle or {}
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from doublebind.studies.verdicts import provisional

    scenarios = list(summary["scenarios"])
    techniques = list(dict.fromkeys(t for sc in summary["scenarios"].values() for t in sc["techniques"]))
    names = list(VERDICT_COLORS)
    cmap = ListedColormap([VERDICT_COLORS[v] for v in names])
    width = max(6.0, 0.45 * len(techniques) + 2.5)
    fig, axes = plt.subplots(2, 1, figsize=(width, 1.3 + 2 * (0.45 * len(scenarios) + 1.2)), squeeze=False,
                             layout="constrained")
    for ax, view, title in [(axes[0][0], "final", "at the delivered (final) checkpoint"),
                            (axes[1][0], "audit_selected", "at the audit-selected checkpoint")]:
        grid = [[float("nan")] * len(techniques) for _ in scenarios]
        for i, sc in enumerate(scenarios):
            for j, t in enumerate(techniques):
                s = summary["scenarios"][sc]["techniques"].get(t)
                if s is not None:
                    v = s[view]["verdict"]
                    grid[i][j] = names.index(v)
                    mark = "*" if power is not None and provisional(s[view], power) else ""
                    mark += "↑" if view == "final" and (sc, t) in rising else ""
                    if (sc, t) in idle:
                        k, n = idle[(sc, t)]
                        mark += "∅" if k == n else "(∅)"
                    ax.text(j, i, VERDICT_SHORT[v] + mark, ha="center", va="center", fontsize=7,
                            color="white" if v in ("incriminating", "capable_benign", "both_fail") else "black")
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
        ax.set_xticks(range(len(techniques)), techniques, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(scenarios)), scenarios, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.legend(handles=[Patch(facecolor=VERDICT_COLORS[v], edgecolor="grey", label=f"{VERDICT_SHORT[v]} {v}")
                        for v in names], loc="outside lower center", ncol=4, fontsize=7,
               title="\n".join(line for line, shown in [
                   (f"*: a rerun reaches this verdict with probability below {power}", power is not None),
                   ("↑: capable_benign, benign or inconclusive, with misalignment transfer still rising at the "
                    "last checkpoint", bool(rising)),
                   ("∅: the technique changed nothing in every run, (∅) in some: the verdict is the study "
                    "recipe's", bool(idle))] if shown) or None,
               title_fontsize=7)
    _suptitle(fig, "verdicts, scenario x technique")
    return _png(fig)


def spread_labels(wanted: list[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Heights for labels that want to sit at `wanted` (any order), each at least `gap` from
    the next, all within [lo, hi], in the wanted order, each as near its wish as that allows:
    pushed up past its lower neighbours, then down from the top where the column ran past
    `hi`; a column taller than [lo, hi] is spread evenly over it."""
    n = len(wanted)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: wanted[i])
    if gap * (n - 1) > hi - lo:  # no room for the gap: even spacing over the whole range
        step = (hi - lo) / max(1, n - 1)
        placed = [lo + step * k for k in range(n)]
    else:
        placed = []
        for i in order:
            placed.append(max(min(max(wanted[i], lo), hi), placed[-1] + gap if placed else lo))
        for k in range(n - 1, -1, -1):
            placed[k] = min(placed[k], hi if k == n - 1 else placed[k + 1] - gap)
    out = [0.0] * n
    for k, i in enumerate(order):
        out[i] = placed[k]
    return out


def plot_frontier(summary: dict, capability: float, misalignment: float) -> bytes:
    """Per scenario: capability against misalignment transfer, one point per technique at
    its final checkpoint (bars: two-level bootstrap 95% intervals), a hollow marker at its
    audit-selected checkpoint. A scenario where no technique has a point (a benign twin, whose
    teacher has no misbehaviour to transfer) gets no panel; the title names it.

    The labels stand in a column at the panel's right, each at its point's height as far as
    the others allow (`spread_labels`), joined to its point by a thin line: beside their
    points the labels of a cluster (the matrix's 29 techniques near capability 0.9) covered
    one another. They and the list of techniques left out of a panel stay out of the layout:
    the layout shrank the axes to fit labels that run past a panel's edge until, with the
    matrix's 29 techniques, it gave up and left the figure a third blank."""
    import textwrap

    plt = _plt()

    def placed(t: dict) -> bool:  # no run defines an axis: no point to place
        return not (t["final"]["capability_transfer"].get("undefined")
                    or t["final"]["misalignment_transfer"].get("undefined"))

    scenarios = [sc for sc, d in summary["scenarios"].items() if any(placed(t) for t in d["techniques"].values())]
    empty = [sc for sc in summary["scenarios"] if sc not in scenarios]
    fig, axes = _panel_grid(plt, len(scenarios), 2, 6.5, 5)
    for sc, ax in zip(scenarios, axes):
        unplaced, labels = [], []
        for t, s in summary["scenarios"][sc]["techniques"].items():
            f, a = s["final"], s["audit_selected"]
            cx, cy = f["capability_transfer"], f["misalignment_transfer"]
            if not placed(s):
                unplaced.append(t)
                continue
            x, y = cx["mean"], cy["mean"]
            err = ax.errorbar([x], [y], xerr=[[max(0.0, x - cx["ci95"][0])], [max(0.0, cx["ci95"][1] - x)]],
                              yerr=[[max(0.0, y - cy["ci95"][0])], [max(0.0, cy["ci95"][1] - y)]], fmt="o",
                              capsize=2, ms=4)
            ax.plot([a["capability_transfer"]["mean"]], [a["misalignment_transfer"]["mean"]], "o", mfc="none",
                    color=err[0].get_color(), ms=6)
            labels.append((f"{t} ({VERDICT_SHORT[f['verdict']]})", x, y, err[0].get_color()))
        ax.axvline(capability, color="grey", ls="--", lw=0.8)
        ax.axhline(misalignment, color="grey", ls="--", lw=0.8)
        lo, hi = ax.get_xlim()
        right = max(hi, 1.05)
        ax.set_xlim(lo, right + 0.6)  # room inside the panel for the column of labels
        ax.set_xticks([v for v in ax.get_xticks() if lo <= v <= right])
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        rail = (right + 0.03 - x0) / (x1 - x0)  # the column's left edge, in axes fractions
        height = ax.get_position().height * fig.get_figheight() * 72  # the panel's height in points
        heights = spread_labels([(y - y0) / (y1 - y0) for _, _, y, _ in labels], gap=8.0 / height,
                                lo=0.02, hi=0.98)
        for (text, x, y, colour), h in zip(labels, heights):
            ax.annotate(text, (x, y), xytext=(rail, h), textcoords="axes fraction", fontsize=6.5, va="center",
                        in_layout=False, arrowprops={"arrowstyle": "-", "lw": 0.4, "color": colour, "alpha": 0.6,
                                                     "shrinkA": 0, "shrinkB": 2})
        if unplaced:
            ax.text(0.01, 0.01, textwrap.fill("undefined here, not plotted: " + ", ".join(unplaced), 100),
                    transform=ax.transAxes, fontsize=7, color="grey", in_layout=False)
        ax.set_xlabel("capability transfer (want high)")
        ax.set_ylabel("misalignment transfer (want low)")
        ax.set_title(sc, fontsize=10)
    _suptitle(fig, "frontier per scenario: filled = delivered checkpoint with 95% intervals (organisms, then seeds); "
                 "hollow = audit-selected; dashed: thresholds"
                   + (f"; no technique's transfers are defined on {', '.join(empty)}, not plotted" if empty else ""))
    return _png(fig)


def paired_differences(values: dict, scenario: str, a: str, b: str) -> list[float]:
    """`values` of technique `a` minus `b`'s, run by run ((scenario, organism seed, technique,
    seed) keys), over the runs both have and both define, in (organism seed, seed) order."""
    runs = sorted({(o, s) for (sc, o, t, s) in values if sc == scenario and t == a},
                  key=lambda k: (k[0] is None, k[0] or 0, k[1]))
    return [values[(scenario, o, a, s)] - values[(scenario, o, b, s)] for o, s in runs
            if (scenario, o, b, s) in values and None not in (values[(scenario, o, a, s)], values[(scenario, o, b, s)])]


def plot_controls(rows: list[dict], summary: dict) -> bytes:
    """Per scenario, each technique that has a control (a filter's matched `random_drop` with
    `like`, or the entry a technique names as its `control`): per run, the technique's
    misalignment transfer minus its control's (black; the bar is the mean and its 95%
    interval from the summary) and the control's minus the control's own reference run's
    (grey: what removing as many items at random did, or what the part left on does), at the
    delivered checkpoint, paired by organism and seed."""
    plt = _plt()
    from matplotlib.lines import Line2D

    delivered = {(r["scenario"], r.get("organism_seed"), r["technique"], r["seed"]): r["misalignment_transfer"]
                 for r in rows if r["selected"]}
    panels = [(sc, [(t, j["control"]) for t, j in data["techniques"].items() if j.get("control")])
              for sc, data in summary["scenarios"].items()]
    panels = [(sc, pairs) for sc, pairs in panels if pairs] or [("no technique has a control", [])]
    fig, axes = _panel_grid(plt, len(panels), 2, 6.5, 1.2 + 0.7 * max(1, *(len(p) for _, p in panels)), extra=0.4)
    for (sc, pairs), ax in zip(panels, axes):
        for y, (t, c) in enumerate(pairs):
            judged = summary["scenarios"][sc]["techniques"]
            own = paired_differences(delivered, sc, t, c)
            ref = (judged.get(c) or {}).get("reference")
            noise = paired_differences(delivered, sc, c, ref) if ref and ref != c else []
            ax.plot(noise, [y - 0.18] * len(noise), "o", color="grey", ms=4, alpha=0.7)
            ax.plot(own, [y + 0.18] * len(own), "o", color="black", ms=4)
            e = (judged[t]["final"].get("vs_control") or {}).get("misalignment_transfer") or {}
            if "ci95" in e:
                ax.errorbar([e["mean"]], [y + 0.18], xerr=[[e["mean"] - e["ci95"][0]], [e["ci95"][1] - e["mean"]]],
                            fmt="|", color="crimson", capsize=3, ms=12)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(pairs)), [f"{t}\nvs {c}" for t, c in pairs], fontsize=7)
        ax.set_ylim(-0.6, max(1, len(pairs)) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel("difference in misalignment transfer")
        ax.set_title(sc, fontsize=10)
    handles = [Line2D([], [], ls="", marker="o", color="grey", alpha=0.7, label="control − its reference, per run"),
               Line2D([], [], ls="", marker="o", color="black", label="technique − control, per run"),
               Line2D([], [], ls="-", marker="|", color="crimson", label="technique − control, mean [95%]")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8)
    _suptitle(fig, "techniques against their controls (a filter's: random_drop like it, as many items of each "
                   "family at random; or the entry a technique names), delivered checkpoint")
    return _png(fig)
