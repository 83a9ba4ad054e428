"""Turn the notebooks into documentation pages for MkDocs, without Quarto.

nbdev's own processors do what `nbdev-docs` does before Quarto: hide the `#| export` cells, add a `show_doc`
(signature and docstring) for every exported name, and run only what those need (the exported cells, the imports,
the `show_doc` calls), never the examples. What is left is Quarto's dialect; this script turns it into what
mkdocs-jupyter renders: the front matter becomes the page title, `#|` directives go, `show_doc` cells keep their
output and lose their input, and links point at the built pages (`20_risk.ipynb` and `/risk.html` become
`risk.html`, relative to the page). Then `mkdocs build` (mkdocs.yml) writes the site into `_docs/`.

Usage: `python tools/docs.py [--workers N] [NOTEBOOK ...]` (default: nbs/index, nbs/NN_*, nbs/research/*).
"""
import argparse, ast, os, re, shutil, sys, tempfile, time
import yaml
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, OUT = ROOT / "nbs", ROOT / "_proc" / "docs"
OFFLINE_ENV = ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "BYBIT_API_KEY", "BYBIT_API_SECRET",
               "BYBIT_BASE_URL")


def sources():
    "The notebooks that become pages: the front page, the numbered modules, the research notebooks."
    return [NBS / "index.ipynb", *sorted(NBS.glob("[0-9]*.ipynb")), *sorted((NBS / "research").glob("[0-9]*.ipynb"))]


def page(nb: Path) -> Path:
    "The page a notebook becomes, relative to the site: `nbs/20_risk.ipynb` -> `risk.ipynb` (nbdev's naming)."
    from nbdev.config import nbpath2html
    return nbpath2html(nb.relative_to(NBS)).with_suffix(".ipynb")


def _only_what_docs_need(cell):
    "nbdev also runs cells mixing imports and other code; we run exports, pure imports and show_doc calls only."
    from nbdev import processors as P
    if P.cell_lang(cell) != "python" or cell.cell_type != "code" or not cell.source: return
    if cell.directives_.get("eval", "").lower() == "false": return
    if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}: return True
    trees = cell.parsed_()
    if not trees: return
    if all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees): return True
    return P._show_docs(trees)


LINK = re.compile(r"\]\((?:\.\./|\./)?(?:(research)/)?(?:\d+[a-zA-Z0-9]*_)?([\w-]+)\.ipynb(#[^)]*)?\)")
ABS_LINK = re.compile(r"\]\(/([\w/-]+\.html(?:#[^)]*)?)\)")
PANDOC_ATTRS = re.compile(r"\)\{[^}]*\}")
SOURCE_LINK = re.compile(r"^\[source\]\([^)]*\)(\{[^}]*\})?\s*$", re.M)


def fix_links(md: str, depth: int) -> str:
    "Quarto's links to links between built pages, relative to a page `depth` folders below the site root."
    up = "../" * depth
    md = SOURCE_LINK.sub("", md)
    md = PANDOC_ATTRS.sub(")", md)
    md = LINK.sub(lambda m: f"]({up}{m[1] + '/' if m[1] else ''}{m[2].lower()}.html{m[3] or ''})", md)
    return ABS_LINK.sub(lambda m: f"]({up}{m[1]})", md)


def _text(s): return "".join(s) if isinstance(s, list) else (s or "")


KEYS = {"code": ("id", "outputs", "execution_count"), "markdown": ("id", "attachments"), "raw": ("id",)}


def _plain(c):
    "Only the keys nbformat allows (nbdev leaves working attributes behind), and only the `tags` of the metadata."
    d = {"cell_type": c["cell_type"], "source": c["source"], **{k: c[k] for k in KEYS[c["cell_type"]] if k in c}}
    d["metadata"] = {"tags": c["metadata"]["tags"]} if "tags" in c.get("metadata", {}) else {}
    if c["cell_type"] == "code": d.setdefault("outputs", []); d.setdefault("execution_count", None)
    return d


def for_mkdocs(nb: dict, depth: int) -> dict:
    "Quarto's processed notebook -> one mkdocs-jupyter renders: title cell, no directives, show_doc inputs hidden."
    cells = []
    for c in nb["cells"]:
        src = _text(c.get("source"))
        if c["cell_type"] == "raw":
            fm = yaml.safe_load(src.strip().strip("-")) or {}
            if "title" not in fm: continue
            c = {"cell_type": "markdown", "metadata": {}, "source": f"# {fm['title']}\n"}
            if fm.get("description"): c["source"] += f"\n> {fm['description']}\n"
        elif c["cell_type"] == "markdown":
            if src.startswith("<!-- WARNING"): continue
            c["source"] = fix_links(src, depth)
        elif c["cell_type"] == "code":
            lines = src.splitlines()
            hidden = any(re.match(r"#\|\s*echo:\s*false", ln) for ln in lines)
            c["source"] = "\n".join(ln for ln in lines if not ln.startswith("#|")).strip()
            if hidden: c.setdefault("metadata", {})["tags"] = ["hide_input"]
            for o in c.get("outputs", []):
                if "text/markdown" in o.get("data", {}):  # a show_doc: shown as a display, without an Out[n] prompt
                    o["data"]["text/markdown"] = fix_links(_text(o["data"]["text/markdown"]), depth)
                    o["output_type"] = "display_data"; o.pop("execution_count", None)
            if not c["source"] and not c.get("outputs") or c["source"] == "from nbdev.showdoc import show_doc": continue
            c["execution_count"] = None  # only some cells ran: no numbers that suggest an order
        cells.append(_plain(c))
    nb["cells"] = cells
    nb["metadata"].pop("widgets", None)  # no widgets here; mkdocs-jupyter would load a widget renderer from a CDN
    return nb


def split_title(nb):
    "nbdev keeps only the title (and a `> description`) of the opening cell: give the why paragraph its own cell."
    from fastcore.nbio import mk_cell
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if first is None or not first.source.startswith("# "): return
    title, _, rest = first.source.partition("\n")
    if not rest.strip(): return
    first.source = title
    nb.cells.insert(nb.cells.index(first) + 1, mk_cell(rest.strip(), "markdown"))
    for i, c in enumerate(nb.cells): c.idx_ = i


def process(src: str) -> tuple[str, float]:
    "One notebook through nbdev's processors and `for_mkdocs`, run in the notebooks' folder, offline."
    import json
    from nbdev import processors as P
    from fastcore.nbio import read_nb, nb2str
    P._do_eval = _only_what_docs_need
    src, t0 = Path(src), time.perf_counter()
    os.chdir(src.parent)
    nb = read_nb(src)
    split_title(nb)
    P.FilterDefaults()(nb)
    d = json.loads(nb2str(nb))
    dst = OUT / page(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(for_mkdocs(d, len(page(src).parts) - 1), indent=1))
    return str(dst.relative_to(ROOT)), time.perf_counter() - t0


def _worker_env(data_dir):
    "Workers see no database, broker or model from the shell: examples stay on embedded defaults."
    for k in OFFLINE_ENV: os.environ.pop(k, None)
    os.environ.update(TRADELAB_DATA_DIR=data_dir, IN_TEST="1", PYTHONWARNINGS="ignore")
    import warnings; warnings.simplefilter("ignore")


def nav_pages(cfg=ROOT / "mkdocs.yml"):
    "Every page named in mkdocs.yml's nav."
    def walk(x):
        if isinstance(x, str): yield x
        elif isinstance(x, dict): yield from (p for v in x.values() for p in walk(v))
        elif isinstance(x, list): yield from (p for v in x for p in walk(v))
    return set(walk(yaml.load(cfg.read_text(), Loader=yaml.BaseLoader)["nav"]))


def check_nav(nbs):
    "A notebook without a place in the nav would be built but never linked: say which, and where it goes."
    missing = sorted(str(page(nb)) for nb in nbs if str(page(nb)) not in nav_pages())
    if missing: sys.exit(f"mkdocs.yml: add these pages to `nav`: {', '.join(missing)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("notebooks", nargs="*")
    a = ap.parse_args(argv)
    nbs = [Path(p).resolve() for p in a.notebooks] or sources()
    check_nav(nbs)
    if not a.notebooks: shutil.rmtree(OUT, ignore_errors=True)  # a renamed notebook leaves no stale page behind
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tradelab-docs-") as data:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_worker_env, initargs=(data,)) as ex:
            for out, secs in ex.map(process, map(str, nbs)): print(f"{secs:5.1f}s {out}")
    css = OUT / "stylesheets" / "wide.css"  # our lines are 120 characters: give code cells the room
    css.parent.mkdir(parents=True, exist_ok=True); css.write_text(".md-grid { max-width: 1600px; }\n")
    print(f"processed {len(nbs)} notebooks in {time.perf_counter() - t0:.0f}s -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":  # workers find `process` as docs.process: IPython takes over their `__main__`
    sys.path.insert(0, str(Path(__file__).parent))
    import docs
    sys.exit(docs.main())
