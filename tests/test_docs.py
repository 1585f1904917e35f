"""README as a front door and the documentation site (docs/, mkdocs.yml): README is short and opens with what the
project is; every command in a code block of README or docs/ is checked (options composed and validated as the
program does, modules and scripts exist, run-configs parse); figures quoted from BENCHMARKS.md agree with it; no
load averages or dates outside BENCHMARKS.md; the site builds in strict mode."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import import_script

import flwr_vproto

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "flwr_vproto" / "conf"
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
BENCHMARKS = (REPO / "BENCHMARKS.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# ------------------------------------------------------------------------------------------------ markdown parsing
def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """``(language, lines)`` of every fenced block, indented ones (inside list items) too; no language = output."""
    blocks: list[tuple[str, list[str]]] = []
    lang, indent, lines = None, 0, []
    for line in text.splitlines():
        fence = re.match(r"^(\s*)```(\w*)\s*$", line)
        if fence and lang is None:
            lang, indent, lines = fence.group(2) or "output", len(fence.group(1)), []
        elif fence:
            blocks.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append(line[indent:])
    return blocks


def commands(lines: list[str]) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment lines dropped."""
    out, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def shell_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every command of every bash block of README and docs/, ``&&`` chains split."""
    found = []
    for path in (README, *PAGES):
        for lang, lines in code_blocks(path.read_text()):
            if lang in ("bash", "sh", "shell", "console"):
                for command in commands(lines):
                    found += [(path.name, part.strip()) for part in command.split("&&")]
    return found


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading`` (a line of the text)."""
    rest = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(rest) if line.startswith("|"))
    rows = []
    for line in rest[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return rows


# ------------------------------------------------------------------------------------------------ README's shape
def test_readme_is_a_front_door():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    assert any(line.startswith("# ") for line in lines[:3]), "the title within the first 3 lines"
    lang, first = code_blocks(text)[0]
    assert lang == "bash" and len(first) == 2, "the first code block: exactly the two set-up commands"
    for line in first:  # each copy-pasteable on a fresh machine, in a venv, the CPU torch wheel first
        steps = [s.strip() for s in line.split("&&")]
        assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"], line
        assert [s for s in steps if s.startswith("pip ")][0] == "pip install torch==2.13.0", line
    assert first[0].endswith("python run_simulation.py")
    assert first[1].endswith("python -m pytest -q -n 2 --dist loadfile")  # two workers (tests/conftest.py)
    for heading in ("## Quick start", "## Threat model and label protection", "## Results", "## Glossary"):
        assert heading in lines, heading


def test_ci_runs_readmes_test_command_from_its_first_code_block():
    """.ci/run picks the command out of README's first code block (not a line number) and runs it as written."""
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run")], env={**os.environ, "CI_PRINT_TEST_COMMAND": "1"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == code_blocks(README.read_text())[0][1][1]


# ------------------------------------------------------------------------------------------------ every command
def _check_overrides(args: list[str]) -> None:
    """What run_simulation.py / flwr-vproto would do before training: known keys, then Hydra's composition and the
    config's validation (sweeps: each swept key known, the rest composed)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from flwr_vproto.cli import unknown_option_line

    words, skip = [], False
    for arg in (re.sub(r"<[\w ]+>", "x", a) for a in args):  # a placeholder (outputs/<date>/<time>) as a user fills it
        if skip or arg in ("-m", "--multirun", "--help", "-h"):
            skip = False
            continue
        if arg == "--cfg":
            skip = True
            continue
        words.append(arg)
    assert unknown_option_line(words) is None, unknown_option_line(words)
    overrides = [o for o in OverridesParser.create().parse_overrides(words)
                 if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    groups = tuple(o.input_line for o in overrides if o.is_add() or o.key_or_group in _GROUPS)
    if groups not in _COMPOSED:  # composing is the slow part: once per choice of presets
        _COMPOSED[groups] = compose("config", list(groups))
    cfg = copy.deepcopy(_COMPOSED[groups])
    for o in overrides:
        if o.input_line not in groups:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)  # typed: a bad value fails as in Hydra
    import_script("run_simulation")._config(cfg)  # SystemExit("config error: ...") if bad


_GROUPS = {p.name for p in (Path(flwr_vproto.__file__).parent / "conf").iterdir() if p.is_dir()}  # the preset groups
_COMPOSED: dict[tuple[str, ...], Any] = {}


def _check_run_config(args: list[str]) -> None:
    """``flwr run <app> [federation] --run-config "..."``: the run-config parses and validates over the app's."""
    from flwr.common.config import flatten_dict, parse_config_args

    from flwr_vproto.run_config import config_from_run_config

    values = [args[i + 1] for i, a in enumerate(args) if a == "--run-config"]
    run_config = {**flatten_dict(PYPROJECT["tool"]["flwr"]["app"]["config"]), **parse_config_args(values)}
    config_from_run_config(run_config, party_index=0, data_path="bank.csv")


def _node_config_keys() -> set[str]:
    """The node-config keys docs/deployment.md documents (its table's first column)."""
    rows = table_rows((REPO / "docs" / "deployment.md").read_text(), "| node-config key |")
    return {r[0].strip("`") for r in rows}


APPS = (".", "vproto-app")  # a checkout's root; the app folder the docs write with `flwr-vproto deploy app vproto-app`


def _check_deploy(args: list[str]) -> None:
    """``flwr-vproto deploy <command> ...``: the command's parser accepts it (``submit``: ``flwr run``'s arguments,
    checked as ``flwr run``'s); the app folder a command names is one the docs write."""
    from flwr_vproto.deploy.cli import parser

    if args[:1] == ["submit"]:
        assert args[1] in APPS, f"submit: the app is this checkout or a folder `deploy app` writes: {args[1]}"
        return _check_run_config(["flwr", "run", *args[1:]])
    parsed = parser().parse_args(args)  # SystemExit(2) on an unknown command or option
    if parsed.command == "app":
        assert str(parsed.folder) in APPS, parsed.folder
    if parsed.command == "local":
        _check_run_config([w for value in parsed.run_config for w in ("--run-config", value)])


def check_command(command: str) -> None:  # noqa: C901 - one branch per kind of command, in one place
    words = shlex.split(command, comments=True)
    head = words[:3]
    if words[:1] in (["export"], ["cd"], ["."], ["apt-get"], ["mkdocs"], ["mypy"]) or words[:2] == ["ruff", "check"]:
        return
    if words[:3] in (["python3", "-m", "venv"], ["python", "-m", "pytest"]):
        return
    if words[:2] == ["pip", "install"]:
        extras = set(PYPROJECT["project"]["optional-dependencies"])
        for spec in words[2:]:
            bracket = re.fullmatch(r"\.\[([\w,]+)\]", spec)
            known = bracket is not None and set(bracket.group(1).split(",")) <= extras
            wheel = re.fullmatch(rf"flwr_vproto-{re.escape(flwr_vproto.__version__)}-py3-none-any\.whl", spec)
            assert spec in ("-e", ".", "torch==2.13.0", "flwr-vproto") or known or wheel, spec
        return
    if words[:2] == ["flwr-vproto", "deploy"]:
        return _check_deploy(words[2:])
    if head == ["python", "-m", "flwr_vproto.deploy"]:
        return _check_deploy(words[3:])
    if head[:2] == ["python", "run_simulation.py"]:
        return _check_overrides(words[2:])
    if words[:1] == ["flwr-vproto"]:
        return _check_overrides(words[1:])
    if head == ["python", "-m", "flwr_vproto"]:
        return _check_overrides(words[3:])
    if head[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(head[2]) is not None, f"no module {head[2]}"
        return
    if words[:1] == ["python"] and words[1].endswith(".py"):
        assert (REPO / words[1]).is_file(), f"no script {words[1]}"
        return
    if words[:2] == ["flwr", "run"]:
        assert words[2] in APPS, "the app is this checkout or the folder `flwr-vproto deploy app` writes"
        return _check_run_config(words)
    if words[:2] == ["flwr", "supernode"]:
        assert words[2] in ("register", "ls", "unregister"), command
        return
    if words[:1] in (["flower-superlink"], ["flower-supernode"]):
        for i, word in enumerate(words):
            if word == "--node-config":
                from flwr.common.config import parse_config_args

                assert set(parse_config_args([words[i + 1]])) <= _node_config_keys(), words[i + 1]
        return
    raise AssertionError(f"no check for this command; add one to tests/test_docs.py: {command}")


@pytest.fixture
def hydra_conf():
    """Hydra initialised once on the shipped configs (``compose`` as run_simulation.py composes)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield
    _COMPOSED.clear()


def test_every_command_in_readme_and_docs_is_checked(hydra_conf):
    found = shell_commands()
    assert len(found) > 40 and {page for page, _ in found} >= {"README.md", "usage.md", "deployment.md"}
    failures = []
    for page, command in found:
        try:
            check_command(command)
        except (AssertionError, SystemExit, Exception) as err:  # noqa: BLE001 - report every failing command
            failures.append(f"{page}: {command}\n    {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_a_command_with_a_misspelt_or_bad_option_fails_the_check(hydra_conf):
    with pytest.raises(AssertionError, match="label_column"):
        check_command("python run_simulation.py dataset.csv.label_colum=y")
    with pytest.raises(SystemExit, match="config error"):
        check_command("python run_simulation.py dataset.aligned_fraction=7")
    with pytest.raises(Exception, match="dataset.csv.label_colum"):
        check_command("flwr run . --run-config \"dataset.csv.label_colum='y'\"")
    with pytest.raises(AssertionError, match="no check"):
        check_command("curl https://example.org | sh")
    with pytest.raises(SystemExit):
        check_command("flwr-vproto deploy local --rounds 2")  # no such option
    with pytest.raises(Exception, match="dataset.csv.label_colum"):
        check_command("flwr-vproto deploy submit vproto-app link --run-config \"dataset.csv.label_colum='y'\"")


# ------------------------------------------------------------------------------------------------ one statement each
def _benchmarks_cells(heading: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(dataset, aligned, method) -> (mean, n) of a BENCHMARKS.md §1 accuracy table."""
    text = BENCHMARKS[BENCHMARKS.index("## 1. "):BENCHMARKS.index("## 2. ")]
    rest = text[text.index(heading):]
    header_line = next(line for line in rest.splitlines() if line.startswith("| dataset"))
    header = [c.strip() for c in header_line.strip("|").split("|")]
    cells = {}
    for row in table_rows(rest, header_line):
        for name, cell in zip(header[2:], row[2:], strict=False):
            match = re.fullmatch(r"([01]\.\d{4}) ± [\d.]+ \(n=(\d+)\)", cell)
            if match:
                cells[(row[0], row[1], name)] = (match.group(1), match.group(2))
    return cells


JOINT_TREES = "### Independent components for the joint trees"  # vproto's adult rows of the current default


def test_readmes_results_table_is_benchmarks_section_1():
    joint_trees = _benchmarks_cells(JOINT_TREES)
    protected = {**_benchmarks_cells("### Under the default label protection"), **joint_trees}
    unprotected = _benchmarks_cells("### Without label protection")
    unprotected.update({(d, a, "vproto"): v for (d, a, m), v in joint_trees.items() if m == "vproto, `defence=none`"})
    rows = table_rows(README.read_text(), "## Results")
    assert len(rows) == 6
    for dataset, aligned, rounds, seeds, *values in rows:
        for method, value in zip(["vproto", "vanilla", "local", "centralized"], values[:4], strict=True):
            assert (value, seeds) == protected[(dataset, aligned, method)], (dataset, aligned, method)
        assert values[4] == unprotected[(dataset, aligned, "vproto")][0], (dataset, aligned, "defence=none")
        assert rounds == ("40" if dataset == "digits" else "20")


def test_readmes_label_protection_figures_are_benchmarks_section_9():
    """The attacks: §9's adult 5 % table of the current default (independent components for the joint trees);
    the cost: §1's adult 5 % cells."""
    section = BENCHMARKS[BENCHMARKS.index("## 9. "):BENCHMARKS.index("## 10. ")]
    rows = {(r[0], r[1]): r for r in table_rows(section, "**adult, 5% aligned, independent components**")}
    none, gauss = rows[("none", "vproto")], rows[("gauss_e1_first3", "vproto")]
    paragraph = " ".join(README.read_text().split("## Threat model and label protection")[1].split("## ")[0].split())
    mean = lambda cell: cell.split(" ± ")[0]  # noqa: E731
    assert f"AUC {mean(none[5])} (chance {none[6]})" in paragraph
    assert f"({mean(gauss[3])}, strongest attack {mean(gauss[5])}, chance {gauss[6]}; {gauss[2]} seeds)" in paragraph
    cells = _benchmarks_cells(JOINT_TREES)
    (default, n), (unprotected, _) = cells[("adult", "5%", "vproto")], cells[("adult", "5%", "vproto, `defence=none`")]
    assert f"({default} against {unprotected} without it, {n} seeds, adult 5 %)" in paragraph
    cost = float(unprotected) - float(default)
    assert (f"costs vproto {cost:.4f} of test accuracy" if cost > 0.0005 else "at no measurable cost") in paragraph


# Figures stated in docs/ only, by the page that measured them (not quoted from BENCHMARKS.md).
OWN_FIGURES = {
    "data.md": {"0.9206", "0.9259", "0.9306", "0.9317", "0.9352", "0.9537", "0.9815", "0.9907"},  # small val sets
    "deployment.md": {"0.9000"},  # an example of the prediction round's log line
}


def test_every_four_decimal_figure_is_benchmarks_or_program_output():
    """A figure in README or docs/ is quoted from BENCHMARKS.md, printed by the program in an output block, or
    measured on that page alone: so two pages cannot state one figure two ways unnoticed."""
    bad = []
    for path in (README, *PAGES):
        text = path.read_text()
        output = " ".join(" ".join(lines) for lang, lines in code_blocks(text) if lang == "output")
        for figure in sorted(set(re.findall(r"(?<![\d.])[01]\.\d{4}(?!\d)", text))):
            if figure not in BENCHMARKS and figure not in output and figure not in OWN_FIGURES.get(path.name, ()):
                bad.append(f"{path.name}: {figure}")
    assert not bad, bad


def test_no_load_averages_or_dates_outside_benchmarks():
    for path in (README, *PAGES):
        text = path.read_text()
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path.name}: a date (BENCHMARKS.md keeps them)"
        assert not re.search(r"\bload( average)?s? \d|\bload \(", text), f"{path.name}: a load average"


# ------------------------------------------------------------------------------------------------ the site
def test_the_documentation_site_builds_in_strict_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "usage" / "index.html").is_file()
    nav = (REPO / "mkdocs.yml").read_text()
    assert all(page.name in nav for page in PAGES), "every docs/ page in mkdocs.yml's nav"
