"""The metadata store on a real PostgreSQL server, started here from the Debian package's binaries."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmloop.serve.server import free_port

pytestmark = pytest.mark.integration  # trains the tiny model; starts a database server


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    on_path = shutil.which("initdb")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([on_path] if on_path else [])
    if not found:
        pytest.skip("no PostgreSQL server binaries here (Debian: apt-get install postgresql); PostgreSQL tests skipped")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed (the README set-up installs it); PostgreSQL tests skipped")
    bindir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="slmloop-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "slm", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                    "-l",
                    str(folder / "server.log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server here ({exc}); PostgreSQL tests skipped")
    try:
        yield f"postgresql://slm@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_whole_registry_runs_on_postgresql(postgres_url: str, tmp_path: Path, tiny_model: Path) -> None:
    import yaml

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.predict.targets import resolve_release
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.release.registry import alias_history, promote, rollback
    from slmloop.store import Release
    from slmloop.train.recipe import train
    from tests.conftest import write_project
    from tests.tiny import toy_rows

    root = write_project(tmp_path / "proj", tiny_model, toy_rows(120), train={"epochs": 2}, export={"dtype": "fp32"})
    manifest = yaml.safe_load((root / "slmloop.yaml").read_text())
    manifest["project"]["store_url"] = postgres_url  # plain postgresql:// as users write it
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    project = open_project(root)
    assert project.store.engine.dialect.name == "postgresql"
    import_source(project, project.manifest.data.sources[0])
    prepare_dataset(project)
    run = train(project)
    export_release(project, run.name)
    export_release(project, run.name)
    evaluate(project, "v2")
    promote(project, "v1", "production", reason="first", force=True)
    promote(project, "v2", "production", reason="evaluated")
    rollback(project, "production")
    assert resolve_release(project, "production").version == 1
    assert [h.action for h in alias_history(project, "production")] == ["rollback", "promote", "promote"]
    assert [r.version for r in project.store.list(Release, Release.version)] == [1, 2]
    project.close()
    # a second process opening the same database sees the same state
    again = open_project(root)
    assert resolve_release(again, "production").version == 1
    again.close()
