"""The paper protocol (core.paper): discovery keeps load errors, `mpq papers`, `mpq config`, the CLI groups
of registered and broken papers, config-name resolution. Uses the test paper (tests/fake_paper)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import yaml

import core.paper
from core.cli import main
from core.errors import ConfigError
from core.paper import Paper, discover_papers, get_paper

FAKE = {"fake": "tests.fake_paper:PAPER"}
BROKEN = {"broken": "tests.no_such_module:PAPER"}


def test_paper_declaration_is_validated():
    with pytest.raises(ValueError, match="lower-case"):
        Paper(name="My Paper", title="t", cli="m:f", config_schema="m:C")
    with pytest.raises(ValueError, match="'module:attribute'"):
        Paper(name="p", title="t", cli="m.f", config_schema="m:C")
    with pytest.raises(ValueError, match="tuple of references"):
        Paper(name="p", title="t", cli="m:f", config_schema="m:C", methods="m:METHOD")


def test_discovery_keeps_load_errors(use_papers):
    use_papers({**FAKE, **BROKEN})
    entries = {e.name: e for e in discover_papers()}
    assert entries["fake"].paper is not None and entries["fake"].error is None
    assert entries["broken"].paper is None and "ModuleNotFoundError" in entries["broken"].error
    assert get_paper("fake").title == "Fake paper (tests)"
    with pytest.raises(ConfigError, match="failed to load"):
        get_paper("broken")
    with pytest.raises(ConfigError, match="unknown paper 'nope'; registered: broken, fake"):
        get_paper("nope")


def test_entry_point_must_name_a_paper_of_the_same_name(monkeypatch):
    eps = [EntryPoint(name="other", value="tests.fake_paper:PAPER", group=core.paper.GROUP),
           EntryPoint(name="notapaper", value="tests.fake_paper:METHOD", group=core.paper.GROUP)]
    monkeypatch.setattr(core.paper, "entry_points", lambda group: eps)
    errors = {e.name: e.error for e in discover_papers()}
    assert "loads the paper named 'fake'" in errors["other"]
    assert "not a core.paper.Paper" in errors["notapaper"]


def test_mpq_papers_lists_every_paper_and_fails_on_a_broken_one(use_papers, capsys):
    use_papers(FAKE)
    assert main(["papers"]) == 0
    out = capsys.readouterr().out
    assert "fake: ok - Fake paper (tests)" in out
    assert "methods: greedy; configs: 1; recomputers: fake_counter; perf: -" in out
    use_papers({**FAKE, **BROKEN})
    assert main(["papers"]) == 1
    out = capsys.readouterr().out
    assert "broken: FAILED to load (tests.no_such_module:PAPER)" in out and "ModuleNotFoundError" in out


def test_mpq_papers_reports_a_part_that_does_not_resolve(use_papers, monkeypatch, capsys):
    from dataclasses import replace

    import tests.fake_paper as fake

    monkeypatch.setattr(fake, "PAPER", replace(fake.PAPER, methods=("tests.fake_paper:NOPE",)))
    use_papers(FAKE)
    assert main(["papers"]) == 1
    assert "error: method tests.fake_paper:NOPE: AttributeError" in capsys.readouterr().out


def test_cli_groups_of_registered_and_broken_papers(use_papers, capsys):
    use_papers({**FAKE, **BROKEN})
    assert main(["fake", "hello", "-c", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == "fake/t/tiny"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(unavailable: ModuleNotFoundError" in capsys.readouterr().out
    assert main(["broken", "anything", "--flag"]) == 2
    assert "command group 'broken' failed to load" in capsys.readouterr().err


def test_config_names_resolve_to_packaged_configs_or_files(use_papers, tmp_path):
    use_papers(FAKE)
    paper = get_paper("fake")
    assert paper.config_names() == ["tiny"]
    assert paper.config_path("tiny") == paper.config_path("tiny.yaml") == paper.configs / "tiny.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("_base_: " + str(paper.configs / "tiny.yaml") + "\nbudget_bits: 4\n")
    assert paper.load_config(str(own)).budget_bits == 4.0 and paper.load_config(str(own)).table_row
    with pytest.raises(ConfigError, match=r"config 'tyni' not found: .* packaged: tiny"):
        paper.config_path("tyni")
    assert paper.load_config(None).budget_bits == 3.0  # no -c: the schema's defaults


def test_run_out_dir_defaults_to_the_config_name(use_papers, tmp_path):
    use_papers(FAKE)
    paper = get_paper("fake")
    assert paper.load_config("tiny").run.out_dir == "runs/fake"  # the file sets it itself
    child = tmp_path / "child.yaml"  # inherits tiny.yaml's run.out_dir, but it is another config
    child.write_text(f"_base_: {paper.configs / 'tiny.yaml'}\nrun: {{seed: 3}}\n")
    assert paper.load_config(str(child)).run.out_dir == "runs/fake/child"
    assert paper.load_config(str(child)).run.seed == 3
    assert paper.load_config(str(child), ["run.out_dir=elsewhere"]).run.out_dir == "elsewhere"
    bare = tmp_path / "bare.yaml"
    bare.write_text("budget_bits: 2\n")
    assert paper.load_config(str(bare)).run.out_dir == "runs/fake/bare"
    assert paper.load_config(None).run.out_dir == "runs/default"  # no -c: the schema's default


@pytest.mark.parametrize("entry", discover_papers(), ids=lambda e: e.name)
def test_packaged_configs_each_have_their_own_run_directory(entry):
    paper = entry.paper
    for name in paper.config_names():
        assert paper.load_config(name).run.out_dir == f"runs/{paper.name}/{name}"


def test_mpq_config_show_prints_the_resolved_yaml(use_papers, capsys):
    use_papers(FAKE)
    assert main(["config", "show", "fake", "-c", "tiny", "budget_bits=4", "data.batch_size=16"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["table_row"] == "fake/t/tiny" and shown["budget_bits"] == 4.0
    assert shown["data"]["batch_size"] == 16 and shown["model"]["num_classes"] is None
    assert shown["run"]["out_dir"] == "runs/fake"
    assert list(shown)[:4] == ["table_row", "model", "data", "run"]
    assert main(["config", "show", "fake", "-c", "tiny", "budget_bitz=4"]) == 2
    assert "unknown config key budget_bitz" in capsys.readouterr().err
    assert main(["config", "list"]) == 0 and capsys.readouterr().out == "fake: tiny\n"


def test_config_show_of_the_real_papers(capsys):
    for entry in discover_papers():
        name = entry.paper.config_names()[0]
        assert main(["config", "show", entry.name, "-c", name]) == 0
        assert yaml.safe_load(capsys.readouterr().out) == core.config.config_to_dict(
            entry.paper.load_config(name))
