"""The documentation runs: every ```python block of docs/**/*.md is executed, like a notebook.

Each page's blocks run in order in one namespace (a later block sees an earlier block's names), in a
temporary working folder, on one torch thread. A block preceded by ``<!-- skip: reason -->`` (on the line
just before its fence) is not run; the skips are printed and may be at most 10% of the blocks. The blocks of
all pages together must run in under 60 s. The generated pages are checked too: the CLI reference matches
the parser, and the results page says where its numbers come from.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
MAX_SKIP_FRACTION = 0.10
#: top-level modules of the optional extras: a page needing a missing one is skipped with the reason, as the
#: rest of the suite skips the tests of an extra that is not installed
OPTIONAL = {
    "lightning": "pip install 'valleys[lightning]'",
    "transformers": "pip install 'valleys[hf]'",
    "peft": "pip install 'valleys[hf]'",
    "pyro": "pip install 'valleys[pyro]'",
    "matplotlib": "pip install 'valleys[plots]'",
    "mnist1d": "pip install 'valleys[data]'",
    "sklearn": "pip install 'valleys[data]'",
    "tqdm": "pip install 'valleys[progress]'",
}
TIME_BUDGET_S = 60.0

pytestmark = pytest.mark.docs


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, or None when the block runs


def extract_blocks(text: str, page: str) -> list[Block]:
    """The ```python blocks of one Markdown page, with their skip markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m["indent"], m["lang"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # past the closing fence
        if lang not in ("python", "py"):
            continue
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(prev)
        blocks.append(Block(page, start + 1, "\n".join(body) + "\n", skip["reason"] if skip else None))
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in extract_blocks(p.read_text(encoding="utf-8"), str(p.relative_to(DOCS)))]


PAGES_WITH_CODE = [
    str(p.relative_to(DOCS))
    for p in pages()
    if any(b.skip is None for b in extract_blocks(p.read_text(encoding="utf-8"), ""))
]
_TIMES: dict[str, float] = {}


def test_extract_blocks_reads_fences_and_skip_markers():
    text = "\n".join(
        [
            "# t",
            "```python",
            "a = 1",
            "```",
            "```bash",
            "echo no",
            "```",
            "<!-- skip: needs a GPU -->",
            "",
            "```python",
            "b = 2",
            "```",
            "- item:",
            "    ```python",
            "    c = 3",
            "    ```",
        ]
    )
    blocks = extract_blocks(text, "t.md")
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (2, "a = 1\n", None),
        (10, "b = 2\n", "needs a GPU"),
        (14, "c = 3\n", None),
    ]


def test_skips_are_few_and_listed(capsys):
    blocks = all_blocks()
    skipped = [b for b in blocks if b.skip is not None]
    with capsys.disabled():
        print(f"\ndocs: {len(blocks)} python blocks, {len(skipped)} skipped")
        for b in skipped:
            print(f"  skipped {b.page}:{b.line}: {b.skip}")
    assert blocks, "no python blocks found under docs/"
    assert len(skipped) <= MAX_SKIP_FRACTION * len(blocks), (
        f"{len(skipped)} of {len(blocks)} blocks are skipped; at most {MAX_SKIP_FRACTION:.0%} may be"
    )


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_blocks_run(page, tmp_path, monkeypatch, one_thread):
    try:
        import matplotlib

        matplotlib.use("Agg")  # a block that plots never opens a window
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{Path(page).stem}"}
    start = time.perf_counter()
    for b in extract_blocks((DOCS / page).read_text(encoding="utf-8"), page):
        if b.skip is not None:
            continue
        try:
            exec(compile(b.code, f"docs/{page}:{b.line}", "exec"), namespace)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                pytest.skip(f"docs/{page}:{b.line} needs {e.name} ({OPTIONAL[e.name.split('.')[0]]})")
            raise AssertionError(f"the block at docs/{page}:{b.line} failed: {type(e).__name__}: {e}") from e
        except Exception as e:  # name the block: the traceback's file is docs/<page>:<line>
            raise AssertionError(f"the block at docs/{page}:{b.line} failed: {type(e).__name__}: {e}") from e
    _TIMES[page] = time.perf_counter() - start


@pytest.mark.slow
def test_blocks_total_time(capsys):
    """Runs after the pages (same module, later in the file): all blocks together under the budget."""
    if set(_TIMES) != set(PAGES_WITH_CODE):
        pytest.skip("not every page ran in this session (selected with -k or -m?)")
    total = sum(_TIMES.values())
    with capsys.disabled():
        print(f"\ndocs blocks: {total:.1f} s in all; " + ", ".join(f"{p} {t:.1f}" for p, t in sorted(_TIMES.items())))
    assert total < TIME_BUDGET_S, f"the documentation's blocks took {total:.1f} s (budget {TIME_BUDGET_S:.0f} s)"


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_matches_the_parser():
    gen = _load_tool("gen_cli_docs")
    text = gen.render()
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == text, "docs/cli.md is stale: run `python tools/gen_cli_docs.py docs/cli.md` (make docs)"
    for name in gen._subcommands(gen.build_parser()):
        assert f"## valleys {name}\n" in text
        assert f"usage: valleys {name}" in text


def test_results_page_is_generated_from_a_demo_folder(tmp_path):
    """A hand-made results.json: the page carries its numbers, verdicts and provenance, nothing else."""

    def stats(m, s):
        return {"mean": m, "std": s, "min": m - s, "max": m + s, "n": 3}

    def row(acc):
        return {"accuracy": stats(acc, 0.01), "nll": stats(0.2, 0.0), "ece": stats(0.03, 0.0), "brier": stats(0.1, 0.0)}

    res = {
        "preset": "mnist1d",
        "quick": False,
        "warnings": [],
        "dataset": "mnist1d",
        "model": "cnn1d",
        "seeds": [0, 1, 2],
        "steps_per_epoch": 29,
        "methods": [
            {"method": "SGD", "spread": {"test": row(0.9)}},
            {"method": "SWA", "spread": {"test": row(0.95)}, "ood_auroc": stats(0.75, 0.02)},
        ],
        "claims": [
            {
                "claim": "SWA has lower test error than SGD at the same budget",
                "metric": "test error",
                "a": "SWA",
                "b": "SGD",
                "a_mean": 0.05,
                "b_mean": 0.10,
                "difference": -0.05,
                "se": 0.01,
                "n": 3,
                "lower_is_better": True,
                "verdict": "holds",
            }
        ],
        "timing": {"total_s": 120.0},
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    page = _load_tool("results_tables").render(tmp_path, command="make demo", machine="a test machine")
    assert "`make demo`" in page and "a test machine" in page and "in 2.0 minutes" in page
    assert (
        "| SWA has lower test error than SGD at the same budget | test error | SWA 5.00% | SGD 10.00% "
        "| -5.00 ± 1.00 | 3 | holds |" in page
    )
    assert "| SWA | 95.00 ± 1.00 | 0.2000 | 0.0300 | 0.1000 |" in page.replace(" ± 0.0000", "")
    assert "| SWA | 0.7500 ± 0.0200 |" in page
    assert "Mode connectivity" not in page  # no section without its data


def test_results_page_states_its_provenance():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert "Generated by tools/results_tables.py" in text
    assert "**Run**:" in text and "**Machine**:" in text and "finished 20" in text


def test_readme_blocks_compile_and_links_resolve():
    """The README's examples are fragments (your model, your loop): they must at least parse, and every
    relative link must name a file of the repository (GitHub renders them as links into docs/)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert (
        lines[2:6] == ["```bash", lines[3], lines[4], "```"]
        and lines[3].startswith("make demo")
        and lines[4].startswith("make test")
    )
    for b in extract_blocks(text, "README.md"):
        compile(b.code, f"README.md:{b.line}", "exec")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to no page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_architecture_names_existing_modules():
    """The module map names real modules: a module renamed, split or moved without updating the page fails."""
    src = ROOT / "src" / "valleys"
    rows = [
        line for line in (DOCS / "architecture.md").read_text(encoding="utf-8").splitlines() if line.startswith("| `")
    ]
    assert {re.match(r"\| `(\w+)`", r)[1] for r in rows} == {
        "core",
        "evaluation",
        "methods",
        "geometry",
        "training",
        "zoo",
        "app",
    }
    missing = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        layer = cells[0].strip("`")
        for name in re.findall(r"`([\w/]+)`", cells[-1]):
            path = src / layer / name.rstrip("/")
            if not (path.with_suffix(".py").is_file() or path.is_dir()):
                missing.append(f"{layer}/{name}")
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    on_disk = {
        p.stem
        for layer in ("core", "evaluation", "methods", "geometry", "training")
        for p in (src / layer).glob("[!_]*.py")
    }
    named = {n.rstrip("/") for row in rows for n in re.findall(r"`([\w/]+)`", row.strip("|").split("|")[-1])}
    assert on_disk <= named, f"library modules missing from docs/architecture.md: {sorted(on_disk - named)}"


def cli_examples(text: str) -> list[tuple[int, list[str]]]:
    """``valleys ...`` command lines of the ```bash blocks of a page (continuations joined, comments and a
    ``torchrun ... -m`` prefix dropped), with their line numbers."""
    import shlex

    out: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    in_bash = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_bash = stripped == "```bash"
            continue
        if not in_bash:
            continue
        i, line = (pending[0], pending[1] + " " + stripped) if pending is not None else (number, raw)
        code = line.split(" #")[0].strip()
        if code.endswith("\\"):
            pending = (i, code[:-1])
            continue
        pending = None
        if "-m valleys " in code:
            code = "valleys " + code.split("-m valleys ", 1)[1]
        if code.startswith("valleys ") and "..." not in code:
            out.append((i, shlex.split(code)[1:]))
    return out


def test_cli_examples_parse():
    """Every ``valleys`` command shown in the README and the docs parses with the real parser (flags and
    choices exist), so an example cannot drift from the command line."""
    from valleys.app import cli

    examples = [
        (name, line, argv)
        for name, text in [("README.md", (ROOT / "README.md").read_text(encoding="utf-8"))]
        + [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in pages() if p.name != "cli.md"]
        for line, argv in cli_examples(text)
    ]
    assert len(examples) > 20
    bad = []
    for name, line, argv in examples:
        try:
            cli._parser().parse_args(argv)
        except SystemExit as e:
            if e.code != 0:
                bad.append(f"{name}:{line}: valleys {' '.join(argv)}")
    assert not bad, "examples the parser refuses:\n" + "\n".join(bad)


@pytest.mark.slow
def test_readme_lightning_and_hugging_face_blocks_run(tmp_path, monkeypatch, one_thread):
    """The README's section on both frameworks runs as written (it cannot drift from the callbacks' API)."""
    pytest.importorskip("lightning", reason="the lightning extra is not installed")
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Lightning and Hugging Face")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = extract_blocks(section, "README.md")
    assert len(blocks) == 2 and all(b.skip is None for b in blocks)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for b in blocks:
        exec(compile(b.code, f"README.md (Lightning and Hugging Face):{b.line}", "exec"), namespace)
    assert namespace["swag"].test_metrics and namespace["swa"].averager.n == 2
