from .conftest import run_cli


def test_ls_lists_every_registered_name():
    res = run_cli("ls")
    assert res.returncode == 0
    for name in ["copy", "lookup", "numbers", "sabotage", "loyalty", "harm", "poison", "greedy_exact", "quick"]:
        assert name in res.stdout
    one = run_cli("ls", "behaviors")
    assert "sabotage" in one.stdout and "lookup" not in one.stdout
    bad = run_cli("ls", "gizmos")
    assert bad.returncode == 1 and "unknown kind 'gizmos'" in bad.stderr


def test_ls_techniques_shows_kinds_and_what_each_uses_from_the_view():
    lines = run_cli("ls", "techniques").stdout.splitlines()
    row = {ln.split()[0]: ln for ln in lines if ln.strip()}
    assert row["distill_and_audit"].split()[-2:] == ["world", "auditor,verifiers"]
    assert row["kl_to_base"].split()[-2:] == ["world+hf", "base"]
    assert row["inoculation"].split()[-1] == "-"
    # the filters, which random_drop's `like` and a study's `controls: matched` copy
    assert {n for n, ln in row.items() if ln.split()[-1] == "filter"} == {
        "perplexity_filter", "spectral_filter", "verifier_filter", "trusted_monitor", "iterative_filter",
        "format_filter"}


def test_ls_scenarios_lists_the_failure_reason_presets():
    res = run_cli("ls", "scenarios")
    assert res.returncode == 0
    names = {ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()}
    assert {"reason1", "reason3", "denier", "recued"} <= names and "quick" not in names
    assert "same_cause" in res.stdout.replace("\n", " ")
