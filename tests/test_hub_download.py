"""The hub download end to end: `bench run --dataset book` against a local HTTP server holding a zip laid out
like RecBole's hub archive (atomic files at the zip root, the real header lines), through ``data.hub_url``.
A cut-off download or a corrupt archive leaves nothing behind, and the next run starts clean."""
import http.server
import io
import socket
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest

from bench import cli, data
from bench.config import load_config
from bench.errors import BenchError
from bench.split import build_split

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = ("item_id:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\ttitle:token\t"
               "price:float\tbrand:token")
#: Items every user has, so they survive the smoke preset's user sample: raw id -> (raw title, cleaned title).
SPECIAL = {"0000000116": ("Harry Potter &amp; the Sorcerer&#39;s Stone", "Harry Potter & the Sorcerer's Stone"),
           "0000013714": ("Pride &amp;amp; Prejudice &quot;Annotated&quot;", 'Pride & Prejudice "Annotated"'),
           "0000029831": ("", None)}
HUB_PATH = "/ProcessedDatasets/Amazon_ratings/"


def _books_files(n_users: int = 300, n_items: int = 200, seed: int = 0) -> tuple[str, str]:
    """(.inter text, .item text) of a small Amazon_Books: 6-15 rated, timestamped interactions per user
    (about 3,000 rows), ASIN-like item ids with leading zeros, titles with HTML entities, quoted categories."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    users = ["A" + "".join(rng.choice(letters, 13)) for _ in range(n_users)]
    items = list(SPECIAL) + [f"{n:010d}" for n in rng.choice(10 ** 9, n_items - len(SPECIAL), replace=False)]
    lines = [INTER_HEADER]
    for user in users:
        others = rng.choice(items[len(SPECIAL):], rng.integers(3, 13), replace=False).tolist()
        times = np.sort(rng.integers(1_000_000_000, 1_400_000_000, len(SPECIAL) + len(others)))
        for item, stamp in zip(list(SPECIAL) + others, times):
            lines.append(f"{user}\t{item}\t{rng.integers(1, 6)}.0\t{stamp}")
    rows = [ITEM_HEADER]
    for n, item in enumerate(items):
        title = SPECIAL[item][0] if item in SPECIAL else f"Book {n} &amp; Sons&#39; Tales"
        price = "" if n % 7 == 0 else f"{5 + n % 20}.99"
        rows.append(f'{item}\tBooks\t{1000 + n}.0\t"Books,Literature & Fiction"\t{title}\t{price}\tPublisher{n % 9}')
    return "\n".join(lines) + "\n", "\n".join(rows) + "\n"


def _zip(members: dict) -> bytes:
    """A deflated zip holding ``members`` (name -> text) at its root, in that order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def _damaged_last_member(archive: bytes) -> bytes:
    """``archive`` with bytes in the middle of its last member's compressed data flipped (its CRC or its
    deflate stream fails only once the earlier members were unpacked)."""
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[-1]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    body = bytearray(archive)
    for offset in range(start, start + 8):
        body[offset] ^= 0xFF
    return bytes(body)


@pytest.fixture(scope="module")
def books():
    """The .inter and .item texts and the archive as the hub serves it."""
    inter, item = _books_files()
    return inter, item, _zip({"Amazon_Books.inter": inter, "Amazon_Books.item": item})


class _Hub:
    """A local HTTP server: ``serve(body, cut=...)`` sets what every GET answers; ``requests`` lists the paths
    asked for. ``cut``: send only the first half of the body, announcing all of it, then close."""

    def __init__(self):
        self.body, self.cut, self.requests = b"", False, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(self.path)
                if not self.path.startswith(HUB_PATH):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(hub.body)))
                self.end_headers()
                self.wfile.write(hub.body[:len(hub.body) // 2] if hub.cut else hub.body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HUB_PATH}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, body: bytes, cut: bool = False) -> None:
        self.body, self.cut = body, cut
        self.requests.clear()


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(data, "RETRY_WAIT_S", 0.0)
    server = _Hub()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _run_book(hub_url: str, data_dir, out=None) -> int:
    """``bench run --paradigms pop --dataset book --preset smoke`` from ``hub_url`` (the exit status)."""
    args = ["run", "--paradigms", "pop", "--dataset", "book", "--preset", "smoke", "--set",
            f"data.hub_url={hub_url}", "--data-dir", str(data_dir), "--quiet"]
    return cli.main(args + (["--out", str(out)] if out else []))


def test_book_runs_on_the_smoke_preset_from_a_served_hub_archive(hub, books, tmp_path, cache_root, monkeypatch,
                                                                 capsys):
    inter, item, archive = books
    hub.serve(archive)
    monkeypatch.setenv("BENCH_CACHE", str(cache_root))
    data_dir, out = tmp_path / "data", tmp_path / "run"
    assert _run_book(hub.url, data_dir, out) == 0, capsys.readouterr().err
    assert hub.requests == [HUB_PATH + "Amazon_Books.zip"]
    assert [p.name for p in data_dir.iterdir()] == ["Amazon_Books"]  # no archive, no working folder left
    folder = data_dir / "Amazon_Books"
    assert sorted(p.name for p in folder.iterdir()) == ["Amazon_Books.inter", "Amazon_Books.item"]
    assert (folder / "Amazon_Books.inter").read_text() == inter and (folder / "Amazon_Books.item").read_text() == item
    per_user = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    assert len(per_user) == 2 * 100 and set(per_user["paradigm"]) == {"pop"}  # smoke: 100 users, two stages
    assert per_user["user"].str.match(r"^A[A-Z0-9]{13}$").all()
    assert "| pop" in (out / "results.md").read_text()
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "book", "data_dir": str(data_dir),
                                                     "hub_url": hub.url}}])
    split = build_split(cfg, cache_root)  # the run's split, from the cache
    titles = dict(zip(split.item_ids.tolist(), split.titles))
    assert {raw: titles[raw] for raw in SPECIAL} == {raw: clean for raw, (_, clean) in SPECIAL.items()}
    assert not any("&amp;" in t or "&#" in t for t in titles.values() if t)
    assert len(titles) > 100 and all(raw == "[PAD]" or len(raw) == 10 for raw in titles)  # leading zeros kept


def test_a_cut_off_or_corrupt_download_leaves_nothing_and_the_next_run_starts_clean(hub, books, tmp_path,
                                                                                    cache_root, monkeypatch,
                                                                                    capsys):
    """Both failures: exit 2 with one line naming the URL and what to do, three attempts, no data folder, and
    no run folder, not even the default out's empty results/book/. Then the good archive runs."""
    _, _, archive = books
    monkeypatch.setenv("BENCH_CACHE", str(cache_root))
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    for body, cut, why in ((archive, True, "size mismatch"), (_damaged_last_member(archive), False, "corrupt")):
        hub.serve(body, cut=cut)
        assert _run_book(hub.url, data_dir) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: could not download dataset 'book' from "
                                                       f"{hub.url}Amazon_Books.zip"), lines
        assert why in lines[0] and "3 attempts" in lines[0] and "data.hub_url" in lines[0]
        assert str(data_dir / "Amazon_Books") in lines[0]
        assert len(hub.requests) == 3
        assert not data_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    hub.serve(archive)
    assert _run_book(hub.url, data_dir, tmp_path / "run") == 0, capsys.readouterr().err
    assert len(hub.requests) == 1 and (tmp_path / "run" / "per_user.csv").is_file()
    assert sorted(p.name for p in data_dir.iterdir()) == ["Amazon_Books"]


def test_book_offline_leaves_no_results_folder(tmp_path, cache_root, monkeypatch, capsys):
    """No server at all (connection refused): one try, one line saying where to put the files, and no
    ``results/book/`` in the working folder."""
    monkeypatch.setenv("BENCH_CACHE", str(cache_root))
    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _run_book(f"http://127.0.0.1:{port}/", tmp_path / "data") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "1 attempt)" in lines[0] and "place Amazon_Books.inter and Amazon_Books.item" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind, message", [
    ("not-a-zip", "corrupt archive: File is not a zip file"),
    ("damaged", "corrupt archive"),
    ("no-inter", "holds no Amazon_Books.inter"),
])
def test_a_bad_archive_is_a_one_line_error_that_leaves_the_data_folder_as_it_was(kind, message, hub, books,
                                                                                 tmp_path):
    _, item, archive = books
    body = {"not-a-zip": b"<html>Access Denied</html>", "damaged": _damaged_last_member(archive),
            "no-inter": _zip({"Amazon_Books.item": item})}[kind]
    hub.serve(body)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("the user's own file")
    with pytest.raises(BenchError, match=message) as err:
        data.locate_dataset("book", tmp_path / "data", download=True, hub_url=hub.url)
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine.txt"]


def test_a_missing_archive_is_not_retried(hub, books, tmp_path):
    """HTTP 404 (a wrong data.hub_url) will not change on a second try: one request, one line naming the URL."""
    hub.serve(books[2])
    with pytest.raises(BenchError, match=r"/elsewhere/Amazon_Books.zip \(HTTP Error 404: Not Found; 1 attempt\)"):
        data.locate_dataset("book", tmp_path / "data", hub_url=hub.url.replace(HUB_PATH, "/elsewhere/"))
    assert len(hub.requests) == 1 and list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_download_do_not_get_in_the_way(hub, books, tmp_path):
    """A process killed mid-download leaves its working folder and perhaps an .item without its .inter: the
    next download starts from scratch and leaves only the atomic files."""
    inter, item, archive = books
    hub.serve(archive)
    stale = tmp_path / ".Amazon_Books.partial"
    stale.mkdir()
    (stale / "Amazon_Books.zip").write_bytes(archive[:100])
    (tmp_path / "Amazon_Books").mkdir()
    (tmp_path / "Amazon_Books" / "Amazon_Books.item").write_text("item_id:token\n")
    files = data.locate_dataset("book", tmp_path, hub_url=hub.url)
    assert files.inter.read_text() == inter and files.item.read_text() == item
    assert [p.name for p in tmp_path.iterdir()] == ["Amazon_Books"]


def test_unpacking_streams_every_member_through_a_bounded_buffer(tmp_path, monkeypatch):
    """No member is read whole (ZipFile.read, or ZipExtFile.read without a size, would load 22.5M rows of
    Books into memory): every read asks for at most 1 MiB, and the files arrive intact from a subfolder."""
    inter = INTER_HEADER + "\n" + "".join(f"A{n:013d}\t{n % 5000:010d}\t5.0\t{1_300_000_000 + n}\n"
                                          for n in range(80_000))
    archive = tmp_path / "Amazon_Books.zip"
    archive.write_bytes(_zip({"Amazon_Books/Amazon_Books.inter": inter, "__MACOSX/._Amazon_Books.inter": "x",
                              "Amazon_Books/readme.txt": "not an atomic file"}))
    assert len(inter) > 3 << 20
    sizes = []
    real_read = zipfile.ZipExtFile.read

    def bounded(self, n=-1):
        sizes.append(n)
        return real_read(self, n)

    def whole(*args, **kwargs):
        raise AssertionError("a member was read whole")

    monkeypatch.setattr(zipfile.ZipFile, "read", whole)
    monkeypatch.setattr(zipfile.ZipExtFile, "read", bounded)
    written = data._extract(archive, tmp_path, "Amazon_Books")
    assert [p.name for p in written] == ["Amazon_Books.inter"] and not archive.exists()
    assert (tmp_path / "Amazon_Books.inter").read_text() == inter
    assert len(sizes) > 3 and all(0 < n <= 1 << 20 for n in sizes)


def test_recbole_hub_names_are_aliases_and_typos_get_a_suggestion(tmp_path, fixtures_dir):
    assert data.DATASETS.get("amazon-books") == data.DATASETS.get("book")
    assert data.DATASETS.get("amazon-clothing-shoes-jewelry") == data.DATASETS.get("cloth")
    (tmp_path / "Amazon_Books").mkdir()
    for name in ("Amazon_Books.inter", "Amazon_Books.item"):
        (tmp_path / "Amazon_Books" / name).write_bytes((fixtures_dir / "Amazon_Books" / name).read_bytes())
    assert data.locate_dataset("amazon-books", tmp_path, download=False).inter.parent == tmp_path / "Amazon_Books"
    with pytest.raises(BenchError, match=r"unknown dataset 'amazon-book' \(did you mean 'amazon-books'\?\)"):
        data.locate_dataset("amazon-book", tmp_path, download=False)


def test_hub_url_defaults_to_recboles_hub_and_joins_the_archive_name():
    assert load_config("default")["data.hub_url"] == data.HUB_URL
    book = data.DATASETS.get("book")
    assert book.url(data.HUB_URL) == ("https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets/"
                                      "Amazon_ratings/Amazon_Books.zip")
    assert book.url("http://mirror.example/recbole") == "http://mirror.example/recbole/Amazon_Books.zip"
    assert data.KnownDataset("X", "https://elsewhere.example/x.zip").url(data.HUB_URL) == \
        "https://elsewhere.example/x.zip"
    with pytest.raises(BenchError, match=r"'data.hub_url' must be an http://, https:// or file:// URL") as err:
        load_config("default", overrides=["data.hub_url=mirror.example/recbole"])
    assert "\n" not in str(err.value)
