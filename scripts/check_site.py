"""Open every page of the built book in headless Chromium and check that it works offline.

For every top-level page _build/html/*.html this script
  * takes a screenshot (_build/screenshots/<page>.png, 1280x2000), and
  * dumps the DOM after the page's scripts ran (MathJax included) and fails on
      - raw TeX left outside MathJax's output (`$$`, `\\(`, `\\begin`, `\\frac`, ...),
        math elements MathJax did not typeset, or MathJax error boxes;
      - an <img> whose file is missing or empty (or an empty data: URI);
      - an error output cell (.output.error, .output.traceback, a Python traceback);
      - a script or stylesheet loaded from http(s) (the site must work offline; Chromium
        runs with every host name unresolvable, so a CDN dependency would also leave raw TeX).
Search is checked too: search.html and searchindex.js exist, the index contains a known
word, and search.html?q=WORD shows results in the browser. Every local address a page refers
to (scripts, stylesheets, images, links to other pages) must exist and lie inside the site.

By default the pages are opened from the file system (file://). The site must also work when a
web server publishes it under a sub-path, as GitHub Pages does (https://OWNER.github.io/cmmc/):
--serve /cmmc/ serves _build/html under that prefix with a local HTTP server (Python's
http.server) and checks it there, each reference fetched over HTTP; --base-url checks a site
served by another server.

    python scripts/check_site.py                      # all pages, from the file system
    python scripts/check_site.py --pages intro data   # some pages
    python scripts/check_site.py --serve /cmmc/       # all pages, over HTTP under /cmmc/
Exit status 0 when every check passes, 1 otherwise; a summary table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # no name resolves: anything fetched from the network fails, as it would offline
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
    "--allow-file-access-from-files",
]
# TeX that must not be visible after MathJax ran
RAW_TEX = re.compile(
    r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{|\\frac|\\mathbb|\\mathcal|\\sum|\\log\b|"
    r"\\tau|\\alpha|\\hat\{|\\left|\\right|\\operatorname|\\text\{"
)
# elements whose text is code or MathJax output, not prose
NOT_PROSE = [
    "script",
    "style",
    "noscript",
    "pre",
    "code",
    "textarea",
    "mjx-container",
    "mjx-assistive-mml",
    "svg",
    "math",
]
ERROR_OUTPUT_SELECTORS = [
    ".output.error",
    ".output.traceback",
    "div.output_error",
    ".cell_output .traceback",
    ".nboutput .stderr .traceback",
]


@dataclass
class PageResult:
    page: str
    math: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("chromium not found: apt-get install -y chromium (or set CHROMIUM=...)")


def run_chromium(chromium: str, url: str, extra: list[str], budget_ms: int) -> str:
    with tempfile.TemporaryDirectory(prefix="cmmc-chromium-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def prose_text(soup: BeautifulSoup) -> str:
    soup = BeautifulSoup(str(soup), "html.parser")  # a copy we may cut up
    main = soup.select_one("main") or soup.select_one("article") or soup.body or soup
    for name in NOT_PROSE:
        for tag in main.find_all(name):
            tag.decompose()
    for tag in main.select(".highlight, .cell_input, .output, .cell_output"):
        tag.decompose()
    return main.get_text(" ", strip=False)


def page_url(base_url: str, path: Path) -> str:
    """The address of a built file: below base_url, or its file:// URI when base_url is ""."""
    if not base_url:
        return path.resolve().as_uri()
    return urljoin(base_url, path.relative_to(HTML).as_posix())


def local_references(html: str, url: str) -> set[str]:
    """Absolute addresses (no fragment) of what a page loads or links to, except remote ones."""
    soup = BeautifulSoup(html, "html.parser")
    refs = [tag["src"] for tag in soup.find_all(["script", "img"], src=True)]
    refs += [tag["href"] for tag in soup.find_all(["link", "a"], href=True)]
    found = set()
    for ref in refs:
        ref = ref.strip()
        if not ref or ref.startswith(("#", "mailto:", "javascript:", "data:")):
            continue
        if re.match(r"^(https?:)?//", ref) and not urljoin(url, ref).startswith(
            ("file:", "http://localhost", "http://127.0.0.1")
        ):
            continue  # remote: an outgoing link (remote scripts are checked elsewhere)
        found.add(urldefrag(urljoin(url, ref))[0].split("?")[0])
    return found


def reference_problem(ref: str, base_url: str) -> str:
    """Why a local reference is broken ("" if it is fine)."""
    site = base_url or HTML.resolve().as_uri() + "/"
    if not ref.startswith(site):
        return f"{ref} lies outside the site {site}"
    if ref.startswith("file:"):
        target = Path(unquote(urlparse(ref).path))
        return "" if target.exists() else f"{ref} does not exist"
    try:
        with urllib.request.urlopen(urllib.request.Request(ref, method="HEAD"), timeout=30) as r:
            return "" if r.status == 200 else f"{ref}: HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        return f"{ref}: HTTP {exc.code}"
    except OSError as exc:
        return f"{ref}: {exc}"


def check_references(pages: list[Path], base_url: str, jobs: int) -> tuple[int, list[str]]:
    """Every local address the pages refer to exists below the site's root."""
    refs: dict[str, str] = {}
    for path in pages:
        url = page_url(base_url, path)
        for ref in local_references(path.read_text(encoding="utf-8"), url):
            refs.setdefault(ref, path.name)
    with ThreadPoolExecutor(max_workers=max(4, jobs)) as pool:
        problems = list(pool.map(lambda ref: reference_problem(ref, base_url), sorted(refs)))
    broken = [f"{p} (from {refs[ref]})" for ref, p in zip(sorted(refs), problems, strict=True) if p]
    return len(refs), broken


@contextlib.contextmanager
def serve(prefix: str) -> Iterator[str]:
    """Serve HTML under http://localhost:PORT/<prefix>/ (a symbolic link in a temporary folder)."""
    name = prefix.strip("/")
    with tempfile.TemporaryDirectory(prefix="cmmc-site-") as root:
        target = Path(root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(HTML.resolve(), target_is_directory=True)

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

        server = ThreadingHTTPServer(("localhost", 0), functools.partial(Quiet, directory=root))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://localhost:{server.server_address[1]}/{name}/"
        finally:
            server.shutdown()
            server.server_close()


def check_page(chromium: str, path: Path, budget_ms: int, base_url: str = "") -> PageResult:
    start = time.perf_counter()
    result = PageResult(path.stem)
    url = page_url(base_url, path)
    shots = SHOTS / "served" if base_url else SHOTS
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"{path.stem}.png"
    try:
        # one browser run: the screenshot and the DOM after scripts (MathJax) ran
        dom = run_chromium(
            chromium,
            url,
            [f"--screenshot={shot}", "--window-size=1280,2000", "--dump-dom"],
            budget_ms,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        result.problems.append(f"browser: {exc}")
        return result
    if not shot.exists() or shot.stat().st_size == 0:
        result.problems.append("no screenshot written")

    raw = path.read_text(encoding="utf-8")
    static = BeautifulSoup(raw, "html.parser")
    soup = BeautifulSoup(dom, "html.parser")

    # 1. math: typeset, no raw TeX left, no MathJax errors
    source_math = len(static.select(".math"))
    result.math = len(soup.find_all("mjx-container"))
    if source_math and not result.math:
        result.problems.append(f"{source_math} math element(s) but MathJax typeset none")
    for span in soup.select(".math"):
        if not span.find("mjx-container"):
            result.problems.append(f"untypeset math: {span.get_text()[:60]!r}")
            break
    if soup.find("mjx-merror") or soup.select("[data-mjx-error]"):
        err = soup.find("mjx-merror") or soup.select("[data-mjx-error]")[0]
        result.problems.append(f"MathJax error: {err.get('data-mjx-error', err.get_text())[:80]}")
    text = prose_text(soup)
    for match in list(RAW_TEX.finditer(text))[:3]:
        context = text[max(0, match.start() - 30) : match.end() + 30].replace("\n", " ")
        result.problems.append(f"raw TeX {match.group()!r}: ...{context.strip()}...")

    # 2. images: every <img> refers to a non-empty file
    for img in soup.find_all("img"):
        src = img.get("src", "")
        result.images += 1
        if src.startswith("data:"):
            if len(src.split(",", 1)[-1]) < 20:
                result.problems.append("empty data: image")
            continue
        parsed = urlparse(src)
        if parsed.scheme in ("http", "https"):
            result.problems.append(f"remote image {src}")
            continue
        file = (
            Path(unquote(parsed.path))
            if parsed.scheme == "file"
            else path.parent / unquote(parsed.path)
        )
        if not file.is_file():
            result.problems.append(f"missing image {src}")
        elif file.stat().st_size == 0:
            result.problems.append(f"empty image {src}")

    # 3. error outputs
    for selector in ERROR_OUTPUT_SELECTORS:
        if soup.select(selector):
            result.problems.append(f"error output ({selector})")
    for out in soup.select(".cell_output, .output"):
        if "Traceback (most recent call last)" in out.get_text():
            result.problems.append("Python traceback in an output")
            break

    # 4. nothing loaded from the network (static HTML and the DOM after scripts ran)
    for doc in (static, soup):
        for tag in doc.find_all("script", src=True):
            if re.match(r"^(https?:)?//", tag["src"]):
                result.problems.append(f"remote script {tag['src']}")
        for tag in doc.find_all("link", href=True):
            rel = " ".join(tag.get("rel", []))
            if ("stylesheet" in rel or "preload" in rel or "modulepreload" in rel) and re.match(
                r"^(https?:)?//", tag["href"]
            ):
                result.problems.append(f"remote {rel} {tag['href']}")
        for tag in doc.find_all("script", src=False):
            if re.search(r"https?://[^\s\"']+\.(js|mjs)\b", tag.get_text()):
                result.problems.append("inline script refers to a remote .js file")
    result.problems = list(dict.fromkeys(result.problems))
    result.seconds = time.perf_counter() - start
    return result


def check_static_assets() -> list[str]:
    """CSS that pulls fonts or styles from the network."""
    problems = []
    for css in (HTML / "_static").rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"(@import\s+url\(|url\()\s*['\"]?(https?:)?//", text):
            problems.append(f"{css.relative_to(HTML)}: remote {match.group(0)}")
    if not (HTML / "_static" / "mathjax" / "tex-chtml.js").is_file():
        problems.append("_static/mathjax/tex-chtml.js missing (sphinx-mathjax-offline)")
    return problems


def check_search(
    chromium: str, word: str, budget_ms: int, base_url: str = ""
) -> tuple[int, list[str]]:
    problems = []
    search, index = HTML / "search.html", HTML / "searchindex.js"
    for f in (search, index):
        if not f.is_file():
            problems.append(f"{f.name} missing")
    if problems:
        return 0, problems
    if word.lower() not in index.read_text(encoding="utf-8").lower():
        problems.append(f"searchindex.js does not contain {word!r}")
    url = page_url(base_url, search) + f"?q={word}"
    try:
        dom = run_chromium(chromium, url, ["--dump-dom"], budget_ms)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return 0, [*problems, f"browser: {exc}"]
    soup = BeautifulSoup(dom, "html.parser")
    hits = len(soup.select("ul.search li"))
    if hits == 0:
        problems.append(f"searching {word!r} in the browser found nothing")
    return hits, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", nargs="+", help="page stems to check (default: all)")
    parser.add_argument("--word", default="contrastive", help="a word the search must find")
    parser.add_argument("--budget-ms", type=int, default=5000, help="Chromium virtual time")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="browsers in parallel")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--serve",
        metavar="PREFIX",
        help="serve the site over HTTP under this sub-path (e.g. /cmmc/) and check it there",
    )
    where.add_argument(
        "--base-url", default="", help="check the site as served there (ends with /)"
    )
    args = parser.parse_args(argv)
    if args.serve:
        with serve(args.serve) as base_url:
            return run_checks(args, base_url)
    return run_checks(args, args.base_url)


def run_checks(args, base_url: str) -> int:
    """Check the pages of args.pages (all by default), opened below base_url or from files."""
    if base_url and not base_url.endswith("/"):
        base_url += "/"

    if not (HTML / "index.html").is_file():
        print(f"no built book in {HTML}: run `make book` first")
        return 1
    chromium = find_chromium()
    pages = sorted(p for p in HTML.glob("*.html") if p.name not in ("index.html",))
    if args.pages:
        pages = [p for p in pages if p.stem in args.pages]
        missing = set(args.pages) - {p.stem for p in pages}
        if missing:
            print(f"pages not built: {sorted(missing)}")
            return 1

    start = time.perf_counter()
    print(f"checking {len(pages)} page(s) at {base_url or HTML.resolve().as_uri() + '/'}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda p: check_page(chromium, p, args.budget_ms, base_url), pages))
    hits, search_problems = check_search(chromium, args.word, args.budget_ms, base_url)
    asset_problems = check_static_assets()
    all_pages = sorted(HTML.glob("*.html"))
    n_refs, ref_problems = check_references(all_pages, base_url, args.jobs)

    width = max(len(r.page) for r in results) if results else 10
    print(f"\n{'page':<{width}}  {'math':>5}  {'images':>6}  {'secs':>5}  status")
    print(f"{'-' * width}  {'-' * 5}  {'-' * 6}  {'-' * 5}  ------")
    for r in results:
        status = "ok" if not r.problems else "FAIL: " + r.problems[0]
        print(f"{r.page:<{width}}  {r.math:>5}  {r.images:>6}  {r.seconds:>5.1f}  {status}")
        for extra in r.problems[1:]:
            print(f"{'':<{width}}  {'':>5}  {'':>6}  {'':>5}        {extra}")
    search_status = "ok" if not search_problems else "FAIL: " + "; ".join(search_problems)
    print(
        f"{'(search)':<{width}}  {'':>5}  {hits:>6}  {'':>5}  {search_status} "
        f"[{hits} result(s) for {args.word!r}]"
    )
    assets_status = "ok" if not asset_problems else "FAIL: " + "; ".join(asset_problems[:3])
    print(f"{'(assets)':<{width}}  {'':>5}  {'':>6}  {'':>5}  {assets_status}")
    refs_status = "ok" if not ref_problems else f"FAIL: {len(ref_problems)} broken"
    print(
        f"{'(links)':<{width}}  {'':>5}  {n_refs:>6}  {'':>5}  {refs_status} "
        f"[{n_refs} local address(es) referred to by {len(all_pages)} page(s)]"
    )
    for problem in ref_problems[:20]:
        print(f"{'':<{width}}  {'':>5}  {'':>6}  {'':>5}        {problem}")

    failed = [r for r in results if r.problems]
    n_fail = len(failed) + bool(search_problems) + bool(asset_problems) + bool(ref_problems)
    shots = SHOTS / "served" if base_url else SHOTS
    print(
        f"\n{len(results)} page(s) checked in {time.perf_counter() - start:.1f} s at "
        f"{base_url or 'file://'}; screenshots in {shots.relative_to(ROOT)}/; "
        f"{n_fail} failure(s)"
    )
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
