"""`kind: download` datasets through the workflow: the manifest job fetches a zip from a local HTTP server
(127.0.0.1, no internet) and reads it like a folder.

Each test builds only `results/data/<name>/manifest.parquet` in a temporary copy of the workflow, with the
default, relative `resources_dir` (`resources`, relative to Snakemake's working directory).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA_DIR
from wfutil import copy_workflow, disable_studies, snakemake, tiny_config, write_config

pytestmark = pytest.mark.integration

NAME = "dl"
MANIFEST = f"results/data/{NAME}/manifest.parquet"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1; yields (folder, base URL). The snakemake subprocess inherits the proxy unset."""
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def faces_zip(archive: Path, version: str, n: int = 8) -> str:
    """A zip of `n` real UTKFace images under utk/images/ with utk/labels.csv (label `<version>-<gender>`)."""
    labels = pd.read_csv(DATA_DIR / "faces_utkface" / "labels.csv").head(n)
    csv = "filename,label\n" + "".join(f"{row.filename},{version}-{row.gender}\n" for row in labels.itertuples())
    with zipfile.ZipFile(archive, "w") as zf:
        for name in labels["filename"]:
            zf.write(DATA_DIR / "faces_utkface" / "images" / name, f"utk/images/{name}")
        zf.writestr("utk/labels.csv", csv)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def workflow(tmp_path: Path, url: str, sha256: str, **extra) -> tuple[Path, dict]:
    workdir = copy_workflow(tmp_path / "wf")
    config = disable_studies(tiny_config(DATA_DIR))
    config["datasets"][NAME] = {
        "category": "face",
        "size": 8,
        "source": {
            "kind": "download",
            "url": url,
            "sha256": sha256,
            "subdir": "utk",
            "labels": "labels.csv",
            "path_column": "filename",
            "image_dir": "images",
            "label_column": "label",
            "retries": 0,
            **extra,
        },
    }
    assert "resources_dir" not in config  # the default, relative `resources`
    write_config(workdir, config)
    return workdir, config


def downloads(workdir: Path) -> list[str]:
    folder = workdir / "resources" / "downloads" / NAME
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def manifest_paths_exist(workdir: Path, manifest: pd.DataFrame) -> bool:
    return all((Path(p) if Path(p).is_absolute() else workdir / p).is_file() for p in manifest["path"])


def test_download_dataset_with_default_relative_resources_dir(tmp_path, served):
    folder, base = served
    sha = faces_zip(folder / "faces.zip", "v1")
    workdir, _ = workflow(tmp_path, f"{base}/faces.zip", sha)

    snakemake(workdir, MANIFEST)

    manifest = pd.read_parquet(workdir / MANIFEST)
    assert len(manifest) == 8 and manifest["included"].all()
    assert manifest["label"].str.startswith("v1-").all()
    assert manifest_paths_exist(workdir, manifest)
    assert downloads(workdir) == ["faces.zip", f"unpacked-{sha[:16]}"]


def test_new_archive_version_at_same_url_is_unpacked_and_old_one_removed(tmp_path, served):
    folder, base = served
    sha1 = faces_zip(folder / "faces.zip", "v1")
    workdir, config = workflow(tmp_path, f"{base}/faces.zip", sha1)
    snakemake(workdir, MANIFEST)
    assert pd.read_parquet(workdir / MANIFEST)["label"].str.startswith("v1-").all()

    sha2 = faces_zip(folder / "faces.zip", "v2")  # same URL, new bytes, new pinned hash
    assert sha2 != sha1
    config["datasets"][NAME]["source"]["sha256"] = sha2
    write_config(workdir, config)
    snakemake(workdir, MANIFEST)

    manifest = pd.read_parquet(workdir / MANIFEST)
    assert len(manifest) == 8 and manifest["included"].all()
    assert manifest["label"].str.startswith("v2-").all()
    assert manifest_paths_exist(workdir, manifest)
    assert downloads(workdir) == ["faces.zip", f"unpacked-{sha2[:16]}"]


def test_zip_bomb_is_refused_before_unpacking(tmp_path, served):
    folder, base = served
    archive = folder / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("utk/labels.csv", "filename,label\nzeros.png,x\n")
        with zf.open("utk/images/zeros.png", "w") as member:  # 200 MB of zeros in a ~200 KB archive
            for _ in range(200):
                member.write(zeros)
    assert archive.stat().st_size < 1_000_000
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    workdir, _ = workflow(tmp_path, f"{base}/bomb.zip", sha, max_unpacked_gb=0.01)

    result = snakemake(workdir, MANIFEST, check=False)

    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "max_unpacked_gb" in line]
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert "bomb.zip" in lines[0] and f"datasets.{NAME}.source.max_unpacked_gb" in lines[0], lines[0]
    assert "209.72 MB" in lines[0] and "10.00 MB" in lines[0], lines[0]  # the declared total (200 MiB) and the limit
    assert downloads(workdir) == ["bomb.zip"]  # no unpacked folder, no temporary one
    assert not (workdir / MANIFEST).exists()
