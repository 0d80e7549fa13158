"""The fetchers, against a local HTTP server on 127.0.0.1 serving the shipped
files (no network): success, a wrong checksum refused and removed, an
interrupted download resumed, archives extracted atomically."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ocnna_fast.cli import main
from ocnna_fast.data import fetch as fetch_mod
from ocnna_fast.data.fetch import REMOTES, Remote, download, fetch


class _Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; the first
    ``cut_after`` request(s) of a file stop after that many bytes, as a
    dropped connection would."""

    def __init__(self, files):
        self.files = dict(files)
        self.endless = False  # stream zeros for ever, whatever the file (a broken mirror)
        self.cut_after = None
        self.cuts_left = 0
        self.refuse_ranges = False  # answer 416 to every range request (a mirror that cannot resume)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append((name, self.headers.get("Range")))
                body = outer.files.get(name)
                if outer.endless:
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(100_000):  # bounded: about 6.5 GB if nobody stops reading
                            self.wfile.write(b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body) or outer.refuse_ranges:
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if outer.cuts_left > 0:
                    outer.cuts_left -= 1
                    self.wfile.write(chunk[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def shipped_resnet20(data_dir) -> bytes:
    return (data_dir / REMOTES["resnet20"].relpath).read_bytes()


def test_fetch_downloads_checks_and_places(tmp_path, shipped_resnet20):
    with _Server({"resnet20-12fca82f.th": shipped_resnet20}) as srv:
        path = fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
        assert path == tmp_path / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"
        assert path.read_bytes() == shipped_resnet20
        assert not list(tmp_path.rglob("*.part"))
        n = len(srv.requests)
        assert fetch("resnet20", tmp_path, base_url=srv.url, progress=False) == path
        assert len(srv.requests) == n  # already there and verified: no second download


def test_fetched_weights_are_what_the_readers_find(tmp_path, monkeypatch, shipped_resnet20):
    """Into the user cache by default, and found there with no checkout data."""
    from ocnna_fast.data import places as datapaths
    from ocnna_fast.data.local import pretrained_weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCNNA_DATA_DIR", raising=False)
    monkeypatch.setattr(datapaths, "checkout_data_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        pretrained_weights("resnet20")
    with _Server({"resnet20-12fca82f.th": shipped_resnet20}) as srv:
        monkeypatch.setenv("OCNNA_FETCH_BASE_URL", srv.url)
        assert main(["fetch", "resnet20", "--no-progress"]) == 0
    assert pretrained_weights("resnet20") == tmp_path / "cache" / "ocnna-fast" / REMOTES["resnet20"].relpath


def test_a_wrong_checksum_is_refused_and_removed(tmp_path, shipped_resnet20):
    tampered = bytearray(shipped_resnet20)
    tampered[1000] ^= 1
    with _Server({"resnet20-12fca82f.th": bytes(tampered)}) as srv:
        with pytest.raises(ValueError, match="does not match the pinned"):
            fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
    assert not list(tmp_path.rglob("*.th*"))  # neither the file nor a .part is left


def test_an_interrupted_download_resumes(tmp_path, shipped_resnet20):
    with _Server({"resnet20-12fca82f.th": shipped_resnet20}) as srv:
        srv.cut_after, srv.cuts_left = 300_000, 1
        with pytest.raises(OSError, match="run the same fetch again to resume"):
            fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
        part = tmp_path / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th.part"
        assert part.stat().st_size == 300_000
        assert not (tmp_path / REMOTES["resnet20"].relpath).exists()  # a half file is never taken as data
        path = fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
        assert srv.requests[-1] == ("resnet20-12fca82f.th", "bytes=300000-")
    assert path.read_bytes() == shipped_resnet20 and not part.exists()


def test_a_mirror_that_refuses_every_resume_starts_over_once(tmp_path, shipped_resnet20, capsys):
    """The hostile pass: a server that cut the file in half and then answered
    416 to every range made each rerun promise a resume that never came."""
    with _Server({"resnet20-12fca82f.th": shipped_resnet20}) as srv:
        srv.cut_after, srv.cuts_left = 300_000, 1
        with pytest.raises(OSError, match="run the same fetch again"):
            fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
        srv.refuse_ranges = True
        path = fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
        assert srv.requests[-2:] == [("resnet20-12fca82f.th", "bytes=300000-"), ("resnet20-12fca82f.th", None)]
    assert path.read_bytes() == shipped_resnet20
    assert "refuses to resume" in capsys.readouterr().err


def test_a_complete_part_is_finished_without_refetching(tmp_path, shipped_resnet20):
    """Interrupted after the last byte but before the rename: the server
    answers 416 to the range, and the .part is verified and placed."""
    dest = tmp_path / "w.th"
    (tmp_path / "w.th.part").write_bytes(shipped_resnet20)
    with _Server({"w.th": shipped_resnet20}) as srv:
        download(f"{srv.url}/w.th", dest, REMOTES["resnet20"].sha256, progress=False)
    assert dest.read_bytes() == shipped_resnet20


def _tar_gz(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archives_are_extracted_whole_into_place(tmp_path, monkeypatch):
    archive = _tar_gz({"cifar-10-batches-py/data_batch_1": b"x" * 1000, "cifar-10-batches-py/batches.meta": b"m"})
    sha = hashlib.sha256(archive).hexdigest()
    monkeypatch.setitem(
        fetch_mod.REMOTES,
        "cifar10",
        Remote("https://example.invalid/cifar-10-python.tar.gz", sha, len(archive), extracts_to="cifar-10-batches-py"),
    )
    with _Server({"cifar-10-python.tar.gz": archive}) as srv:
        path = fetch("cifar10", tmp_path, base_url=srv.url, progress=False)
    assert path == tmp_path / "cifar-10-batches-py"
    assert (path / "data_batch_1").read_bytes() == b"x" * 1000
    assert not (tmp_path / "downloads" / "cifar-10-python.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_archives_with_escaping_members_are_refused(tmp_path, monkeypatch):
    archive = _tar_gz({"../evil": b"x", "cifar-10-batches-py/a": b"y"})
    sha = hashlib.sha256(archive).hexdigest()
    monkeypatch.setitem(
        fetch_mod.REMOTES,
        "cifar10",
        Remote("https://example.invalid/cifar-10-python.tar.gz", sha, len(archive), extracts_to="cifar-10-batches-py"),
    )
    with _Server({"cifar-10-python.tar.gz": archive}) as srv:
        with pytest.raises(ValueError, match="refusing the archive member"):
            fetch("cifar10", tmp_path, base_url=srv.url, progress=False)
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "cifar-10-batches-py").exists()


def test_unknown_item_and_missing_file_are_clear(tmp_path, capsys, shipped_resnet20):
    assert main(["fetch", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert "unknown fetch item 'imagenet'" in capsys.readouterr().err
    with _Server({}) as srv:
        with pytest.raises(OSError, match="404"):
            fetch("resnet32", tmp_path, base_url=srv.url, progress=False)


def test_pinned_values_are_well_formed():
    for name, r in REMOTES.items():
        assert len(r.sha256) == 64 and int(r.sha256, 16) >= 0 and r.size > 0, name
        assert r.url.startswith("https://"), name


def test_an_endless_stream_stops_at_the_pinned_size(tmp_path, shipped_resnet20):
    with _Server({}) as srv:
        srv.endless = True
        with pytest.raises(ValueError, match="sent more than the pinned"):
            fetch("resnet20", tmp_path, base_url=srv.url, progress=False)
    part = tmp_path / "resnet-cifar10-akamaster" / (REMOTES["resnet20"].filename + ".part")
    assert not part.exists()  # removed, and it never grew past the pinned size + one block


def test_refusals_do_not_promise_a_resume(tmp_path, shipped_resnet20):
    with _Server({}) as srv:
        with pytest.raises(OSError) as info:
            fetch("resnet32", tmp_path, base_url=srv.url, progress=False)
    assert "HTTP 404" in str(info.value) and "resume" not in str(info.value)
    blocked = tmp_path / "blocked"  # a file where the folder must go: unwritable for root too
    blocked.mkdir()
    (blocked / "resnet-cifar10-akamaster").write_text("a file, not a folder")
    with _Server({REMOTES["resnet20"].filename: shipped_resnet20}) as srv:
        with pytest.raises(OSError) as info:
            fetch("resnet20", blocked, base_url=srv.url, progress=False)
    assert "cannot create" in str(info.value) and "resume" not in str(info.value)


def test_a_partial_extracted_folder_is_not_taken_as_whole(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a whole cifar10.*missing batches.meta"):
        fetch("cifar10", tmp_path, progress=False)
