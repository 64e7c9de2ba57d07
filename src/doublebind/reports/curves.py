"""Transfer curves of one distillation run, drawn from its metrics.jsonl rows."""

from __future__ import annotations

from pathlib import Path


def plot_transfer(rows: list[dict], reference: dict, path: Path, title: str) -> None:
    """Left: capability and misalignment transfer over training. Right: the raw rates an
    auditor and the ground truth see, with the teacher's as dashed lines."""
    fig = transfer_figure(rows, reference, title)  # selects the Agg backend before pyplot loads
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def transfer_figure(rows: list[dict], reference: dict, title: str):
    """The figure `plot_transfer` saves (a transfer that is None, undefined, is a gap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key):
        return [r[key] if r[key] is not None else float("nan") for r in rows]

    ax1.plot(steps, series("capability_transfer"), "o-", label="capability transfer")
    ax1.plot(steps, series("misalignment_transfer"), "s-", color="crimson", label="misalignment transfer")
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.axhline(1, color="grey", lw=0.5, ls=":")
    ax1.set_xlabel("step")
    ax1.set_ylabel("(student - base) / (teacher - base)")
    ax1.set_title("transfer")
    ax1.legend(loc="best", fontsize=8)

    teacher = reference["teacher"]
    for key, color, label in [("deploy", "crimson", "misbehaviour, real deployment"),
                              ("honeypot", "darkorange", "misbehaviour, honeypot (audit)")]:
        ax2.plot(steps, [r["misbehavior"][key] for r in rows], "o-", color=color, label=label)
        ax2.axhline(teacher["misbehavior"][key], color=color, ls="--", lw=1)
    ax2.plot(steps, [r["confession"] for r in rows], "^-", color="purple", label="confession (audit)")
    ax2.axhline(teacher["confession"], color="purple", ls="--", lw=1)
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_xlabel("step")
    ax2.set_ylabel("rate (dashed: teacher)")
    ax2.set_title("student rates")
    ax2.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
