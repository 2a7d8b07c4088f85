"""Every registered paper (``mpq.papers`` entry points), one test id per paper: it loads with every part
resolving, its CLI answers ``--help``, every packaged config validates against its schema, and its smoke
run writes a results.json that validates against core.results (as torchvision's
``test_schema_meta_validation`` checks every weight's metadata). A newly registered paper is tested by
these without a line of new test code; its methods run in tests/benchmarks/test_quick.py."""

from __future__ import annotations

import argparse

import pytest

from core.cli import build_parser
from core.paper import discover_papers
from core.results import load_results

ENTRIES = discover_papers()


def _paper(entry):
    assert entry.paper is not None, f"paper {entry.name} ({entry.value}) failed to load: {entry.error}"
    return entry.paper


def test_the_papers_are_registered():
    assert {e.name for e in ENTRIES} >= {"edmips", "llt"}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_paper_loads_and_every_part_resolves(entry):
    paper = _paper(entry)
    info = paper.check()
    assert info["errors"] == []
    assert info["methods"] and info["configs"] == len(paper.config_names()) > 0
    assert paper.title and paper.smoke is not None, "a paper declares a smoke run (core.paper.Paper.smoke)"


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_cli_help_of_every_command(entry, capsys):
    _paper(entry)
    group = dict(_subparsers(build_parser()))[entry.name]
    commands = [[entry.name]] + [[entry.name, name] for name, _ in _subparsers(group)]
    assert len(commands) > 1, f"mpq {entry.name} has no sub-commands"
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*argv, "--help"])
        assert exit_info.value.code == 0, argv
        assert "usage: mpq " + " ".join(argv) in capsys.readouterr().out


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_packaged_config_validates(entry):
    paper = _paper(entry)
    bad = {}
    for name in paper.config_names():
        try:
            cfg = paper.load_config(name)
            assert cfg.model.name and cfg.data.name and cfg.run.out_dir
        except Exception as exc:  # noqa: BLE001 - report every broken config at once
            bad[name] = f"{type(exc).__name__}: {exc}"
    assert not bad


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_smoke_run_writes_valid_results(entry, tmp_path):
    paper = _paper(entry)
    path = paper.run_smoke(tmp_path / "run")
    assert path.name == "results.json" and path.is_relative_to(tmp_path / "run")
    result = load_results(path)  # every key, type and range of core.results.RunResult
    assert result.paper == paper.name and result.world_size == 1 and result.seed == 0
    assert result.policy is not None and result.config is not None
    assert 0.0 <= result.metrics["top1"] <= result.metrics["top5"] <= 100.0
    assert result.counts.bops > 0 and result.counts.macs > 0 and result.wall_time_s


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_loading_the_paper_object_imports_no_training_code(entry):
    """`mpq --help` and `mpq papers` load every Paper object: that must not import torch or the stages."""
    import ast
    import subprocess
    import sys

    module = entry.value.split(":")[0]  # e.g. papers.edmips: only it and its parents may be imported
    top = module.split(".")[0]
    code = ("import sys; from importlib.metadata import entry_points; "
            f"[ep.load() for ep in entry_points(group='mpq.papers') if ep.name == {entry.name!r}]; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', {top!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)]
    assert ast.literal_eval(out) == sorted(parents)
