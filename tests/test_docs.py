"""The documentation keeps its promises: every tool, benchmark and module that README.md and
docs/*.md tell the user to run exists, each python one answers `--help` and knows the options the
docs give it, every relative link reaches a file (and heading), every docs page is linked from
README.md, and README.md stays short."""

import contextlib
import glob
import importlib.util
import io
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
MAX_README_LINES = 200

# A script of this project (`python tools/x.py`, `python benchmarks/x.py`, `bash benchmarks/x.sh`,
# `torchrun ... tools/x.py`, a bare `tools/x.py --option`), possibly after a line break.
SCRIPT = re.compile(r"(?<![\w/.-])((?:tools|benchmarks)/[\w-]+\.(?:py|sh))\b")
MODULE = re.compile(r"\bpython\s+-m\s+([A-Za-z_][\w.]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`]+)`")
OPTION = re.compile(r"^--[a-z][\w-]*")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, REPO)


def commands(text):
    """(script, the text after it) of every script the text names: in fenced blocks (line
    continuations joined, comments dropped) and inline code the text after a script is its
    arguments; in plain prose a script is only named."""
    found = []
    for block in CODE_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines()[1:]:
            found += _commands_in(re.split(r"(?:^|\s)#\s", line, maxsplit=1)[0])
    prose = CODE_BLOCK.sub("", text)
    for span in CODE_SPAN.findall(prose):
        found += _commands_in(span)
    found += [(script, "") for script in SCRIPT.findall(CODE_SPAN.sub("", prose))]
    return found


def _commands_in(line):
    matches = list(SCRIPT.finditer(line))
    ends = [m.start() for m in matches[1:]] + [len(line)]
    return [(m.group(1), line[m.end() : end]) for m, end in zip(matches, ends)]


def options(argument_text):
    """The `--option` names a documented command passes (before any `|`, `&&` or `;`)."""
    argument_text = re.split(r"\||&&|;", argument_text)[0]
    try:
        tokens = shlex.split(argument_text)
    except ValueError:
        tokens = argument_text.split()
    opts = set()
    for token in tokens:
        if token == "--opts":  # what follows are config overrides
            opts.add(token)
            break
        m = OPTION.match(token)
        if m:
            opts.add(m.group(0).split("=")[0])
    return opts


def help_text(script):
    """`python SCRIPT --help` run in-process: its output; fails unless it exits with status 0."""
    argv, path, out = sys.argv, list(sys.path), io.StringIO()
    sys.argv = [script, "--help"]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` does
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{rel(script)} --help exited with {e.code}:\n{out.getvalue()}"
    else:
        raise AssertionError(f"{rel(script)} --help did not exit (it ran instead of printing help)")
    finally:
        sys.argv, sys.path[:] = argv, path
    return out.getvalue()


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def broken_links(path, text):
    """Relative links of `text` (a page at `path`) whose file, or heading, does not exist."""
    broken = []
    for target in LINK.findall(CODE_BLOCK.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        if not os.path.exists(dest):
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+\s+(.*)$", CODE_BLOCK.sub("", read(dest)), re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    return broken


@pytest.fixture(scope="module")
def documented():
    """{script: (the pages that name it, the options they give it)} over README.md and docs/."""
    scripts = {}
    for page in PAGES:
        for script, args in commands(read(page)):
            pages, opts = scripts.setdefault(script, (set(), set()))
            pages.add(rel(page))
            opts |= options(args)
    return scripts


def test_the_collectors_find_commands_options_links_and_anchors():
    text = (
        "```bash\npython tools/a.py --x 1 \\\n    --y 2   # --not-this\nbash benchmarks/b.sh\n"
        "# python tools/comment.py\ntorchrun --nproc-per-node 8 tools/d.py --w\n```\n"
        "Run `OMP_NUM_THREADS=1 python\nbenchmarks/c.py --z 3` or `tools/e.py --v`; tools/f.py too. "
        "See [a](missing.md), [b](README.md#no-such-heading), [c](README.md) and "
        "[d](https://x.org/y.md)."
    )
    found = {}
    for script, args in commands(text):
        found.setdefault(script, set()).update(options(args))
    assert found == {
        "tools/a.py": {"--x", "--y"},
        "benchmarks/b.sh": set(),
        "tools/d.py": {"--w"},
        "benchmarks/c.py": {"--z"},
        "tools/e.py": {"--v"},
        "tools/f.py": set(),
    }
    assert broken_links(README, text) == ["missing.md", "README.md#no-such-heading"]
    assert slug("Speed and memory (`benchmarks/throughput.py`)") == (
        "speed-and-memory-benchmarksthroughputpy"
    )


def test_documented_scripts_exist(documented):
    assert {"tools/train_cls.py", "benchmarks/speed.py"} <= set(documented), "not collected"
    missing = sorted(s for s in documented if not os.path.isfile(os.path.join(REPO, s)))
    assert not missing, f"the docs name scripts that do not exist: {missing}"
    for script in sorted(s for s in documented if s.endswith(".sh")):  # and shell scripts parse
        result = subprocess.run(["bash", "-n", os.path.join(REPO, script)], capture_output=True)
        assert result.returncode == 0, f"{script}: {result.stderr.decode()}"


def test_documented_modules_exist():
    modules = {m for page in PAGES for m in MODULE.findall(read(page))}
    assert modules, "no documented `python -m` command was collected"
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"the docs run modules that do not exist: {missing}"


def test_documented_python_scripts_answer_help_and_know_their_options(documented):
    problems = []
    for script, (pages, opts) in sorted(documented.items()):
        path = os.path.join(REPO, script)
        if not script.endswith(".py") or not os.path.isfile(path):
            continue  # a missing file is test_documented_scripts_exist's
        try:
            usage = help_text(path)
        except AssertionError as e:
            problems.append(str(e))
            continue
        unknown = sorted(o for o in opts if not re.search(re.escape(o) + r"(?![\w-])", usage))
        if unknown:
            problems.append(f"{script} has no {unknown} (documented in {sorted(pages)})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_reach_their_files(page):
    broken = broken_links(page, read(page))
    assert not broken, f"{rel(page)} links to what does not exist: {broken}"


def test_every_docs_page_is_linked_from_readme():
    linked = {
        os.path.normpath(os.path.join(REPO, target.partition("#")[0]))
        for target in LINK.findall(CODE_BLOCK.sub("", read(README)))
    }
    unlinked = sorted(rel(p) for p in PAGES[1:] if p not in linked)
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_readme_is_short():
    lines = read(README).count("\n")
    too_long = f"README.md has {lines} lines (at most {MAX_README_LINES}): move details into docs/"
    assert lines <= MAX_README_LINES, too_long
