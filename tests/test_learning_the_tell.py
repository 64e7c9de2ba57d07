"""benchmarks/learning_the_tell.py: its curves are per-step means over the runs of one
(scenario, technique), of the real-deployment and honeypot misbehaviour rates, the generic
auditor's success@100 and capability transfer, and its figure draws them."""

import pytest

from .test_verdicts import _benchmark


def _row(scenario, technique, seed, step, deploy, honeypot, audit, cap):
    return {"scenario": scenario, "technique": technique, "seed": seed, "step": step,
            "misbehavior": {"deploy": deploy, "honeypot": honeypot, "neutral": 0.0},
            "auditor": {"success_at_k": audit}, "capability_transfer": cap}


def test_the_curves_are_means_over_runs_per_step_kept_apart_by_scenario_and_technique():
    tell = _benchmark("learning_the_tell")
    rows = [_row("a", "t", 0, 100, 0.2, 0.2, 0.0, 0.5), _row("a", "t", 1, 100, 0.4, 0.0, 1.0, 0.7),
            _row("a", "t", 0, 200, 0.9, 0.1, 0.5, 0.9), _row("a", "t", 1, 200, 0.7, 0.3, 0.0, 0.8),
            _row("a", "u", 0, 100, 1.0, 1.0, 1.0, 1.0), _row("b", "t", 0, 100, 0.0, 0.0, 0.0, 0.0)]
    got = tell.curves(rows)
    assert set(got) == {("a", "t"), ("a", "u"), ("b", "t")}
    assert list(got[("a", "t")]) == [100, 200]
    assert got[("a", "t")][100] == pytest.approx({"deploy": 0.3, "honeypot": 0.1, "audit": 0.5, "capability": 0.6,
                                                  "runs": 2})
    assert got[("a", "t")][200] == pytest.approx({"deploy": 0.8, "honeypot": 0.2, "audit": 0.25, "capability": 0.85,
                                                  "runs": 2})
    assert got[("a", "u")][100]["runs"] == 1 and got[("b", "t")][100]["deploy"] == 0.0


def test_the_figure_draws_the_curves(tmp_path, monkeypatch):
    """One panel per (scenario, technique), in the order asked, each with the four curves'
    per-step means, written as a PNG."""
    import matplotlib.pyplot as plt

    tell = _benchmark("learning_the_tell")
    rows = [_row(sc, t, s, step, 0.1 * step / 100 + 0.01 * s + (0.3 if t == "u" else 0.0), 0.05, 0.1 * s,
                 0.9 if sc == "a" else 0.4) for sc in ("a", "b") for t in ("t", "u") for s in (0, 1)
            for step in (0, 100, 200)]
    made, real = [], plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    path = tmp_path / "fig" / "tell.png"
    table = tell.curves(rows)
    tell.plot(table, ["a", "b"], ["t", "u"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ((_, axes),) = made
    for i, sc in enumerate(("a", "b")):
        for j, t in enumerate(("t", "u")):
            ax, got = axes[i][j], table[(sc, t)]
            assert ax.get_title() == f"{sc}: {t}"
            lines = {line.get_label(): line for line in ax.get_lines()}
            for col, label in (("deploy", "misbehaviour, real deployments"), ("honeypot", "misbehaviour, honeypots"),
                               ("audit", "generic auditor's success@100"), ("capability", "capability transfer")):
                assert list(lines[label].get_xdata()) == [0, 100, 200]
                assert list(lines[label].get_ydata()) == pytest.approx([got[step][col] for step in (0, 100, 200)])
