"""Metadata store: SQLAlchemy 2 tables and one :class:`Store` that owns them.

SQLite inside the project folder by default; any SQLAlchemy URL (PostgreSQL
for a team) through the same code. Each state change is one transaction, and
every change a user would want to audit also appends an :class:`Event`.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from slmloop.errors import NotFoundError, StoreError

__all__ = [
    "AliasHistory",
    "DatasetVersion",
    "DriftReport",
    "Evaluation",
    "Event",
    "GoldVersion",
    "Import",
    "Prediction",
    "Release",
    "RequestLog",
    "Run",
    "Store",
    "utcnow",
]

SCHEMA_VERSION = 3

#: what each schema version adds to a store made by the one before: (table, column, its DDL). New tables come
#: from create_all, which also gives a table it creates every column, so a column already there is skipped.
_MIGRATIONS: dict[int, list[tuple[str, str, str]]] = {
    2: [
        ("alias_history", "who", "VARCHAR(128) DEFAULT '' NOT NULL"),
        ("alias_history", "action", "VARCHAR(16) DEFAULT 'promote' NOT NULL"),
        ("alias_history", "forced", "BOOLEAN DEFAULT FALSE NOT NULL"),
    ],
    3: [
        ("imports", "seq", "INTEGER DEFAULT 0 NOT NULL"),
        ("imports", "state_note", "TEXT DEFAULT '' NOT NULL"),
        ("evaluations", "dataset_id", "VARCHAR(32)"),
    ],
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


Row = TypeVar("Row", bound=Base)


class Event(Base):
    """Append-only audit log."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(128), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Import(Base):
    """One source file read into the project, with per-row accounting.

    Only active imports feed ``data prepare``. An import stops being active when the same source
    path is imported again with other contents (superseded) or when a user drops it; ``state_note``
    says which. ``seq`` orders the imports as the user made them: where two imports answer the same
    input differently, the one with the higher ``seq`` is the correction that wins. Importing a file
    again gives its import a new ``seq``.
    """

    __tablename__ = "imports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source_path: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    rows_read: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    accepted_object: Mapped[str] = mapped_column(String(64))
    rejects_object: Mapped[str] = mapped_column(String(64))
    reasons: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    state_note: Mapped[str] = mapped_column(Text, default="")


class GoldVersion(Base):
    __tablename__ = "gold_versions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    object: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    import_ids: Mapped[list[Any]] = mapped_column(default=list)
    train_object: Mapped[str] = mapped_column(String(64))
    validation_object: Mapped[str] = mapped_column(String(64))
    gold_id: Mapped[str] = mapped_column(ForeignKey("gold_versions.id"))
    rejects_object: Mapped[str] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    dataset_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"))
    gold_id: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text, default="")

    @property
    def name(self) -> str:
        return f"run-{self.id}"


class Evaluation(Base):
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model_ref: Mapped[str] = mapped_column(String(128))
    gold_id: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: the dataset version the model learned from (a run's, a release's, a baseline's fit); None: base, endpoints
    dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    @property
    def name(self) -> str:
        return f"eval-{self.id}"


class Prediction(Base):
    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    prediction: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text, default="")
    correct: Mapped[bool] = mapped_column(Boolean)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Release(Base):
    __tablename__ = "releases"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(32))
    gold_id: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AliasHistory(Base):
    """Append-only: the current target of an alias is its newest row."""

    __tablename__ = "alias_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(ForeignKey("releases.version"))
    previous: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    who: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(16), default="promote")  # promote | rollback
    forced: Mapped[bool] = mapped_column(Boolean, default=False)


class RequestLog(Base):
    __tablename__ = "requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    release_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)


class DriftReport(Base):
    __tablename__ = "drift_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    release_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    verdict: Mapped[str] = mapped_column(String(16))
    n_requests: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text, default="")


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _driver_url(url: str) -> str:
    """``postgresql://…`` as users write it, run by the psycopg (3) driver slmloop installs."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg2") is None:
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Store:
    """All metadata of one project. Pass it explicitly; there is no global store."""

    def __init__(self, url: str) -> None:
        self.url = url = _driver_url(url)
        try:
            self.engine: Engine = create_engine(url, future=True)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(
                f"cannot open the metadata store {url!r}: {exc}",
                hint="Check project.store_url in slmloop.yaml (sqlite:///path or postgresql://…).",
            ) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
            with self.session() as s:
                row = s.get(Meta, "schema_version")
                if row is None:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                else:
                    self._migrate(s, row)
        except OperationalError as exc:
            raise StoreError(
                f"cannot open the metadata store {url!r}: {exc.orig}",
                hint="Check that the folder is writable and the database server is reachable.",
            ) from None

    @staticmethod
    def _migrate(s: Session, row: Meta) -> None:
        """Bring a store written by an older slmloop up to :data:`SCHEMA_VERSION`, in one transaction."""
        found = int(row.value)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the metadata store has schema version {found}; this slmloop knows up to {SCHEMA_VERSION}",
                hint="Upgrade slmloop (pip install -U slmloop) to open this project.",
            )
        from sqlalchemy import inspect

        inspector = inspect(s.connection())
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for table, column, ddl in _MIGRATIONS.get(version, []):
                if column not in {c["name"] for c in inspector.get_columns(table)}:
                    s.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
        row.value = str(SCHEMA_VERSION)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # -- audit log ---------------------------------------------------------
    def log_event(self, s: Session, kind: str, subject: str = "", **payload: Any) -> None:
        s.add(Event(kind=kind, subject=subject, payload=payload))

    def events(self, kind: str | None = None, limit: int = 100, subject: str | None = None) -> Sequence[Event]:
        """The newest ``limit`` events, newest first; where given, of one ``kind`` (``data`` also reads
        ``data.import``, ``data.prepare`` …) and about one ``subject``."""
        with self.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if kind:
                q = q.where(or_(Event.kind == kind, Event.kind.startswith(kind + ".")))
            if subject:
                q = q.where(Event.subject == subject)
            return s.scalars(q).all()

    # -- small named pointers (e.g. the current gold version) -------------
    def set_meta(self, s: Session, key: str, value: str) -> str | None:
        """Set the pointer ``key`` inside session ``s``; returns the value it had (None: unset)."""
        row = s.get(Meta, key)
        if row is None:
            s.add(Meta(key=key, value=value))
            return None
        before, row.value = row.value, value
        return before

    def lock(self, s: Session, name: str) -> None:
        """Serialise every transaction that locks ``name`` until ``s``'s transaction ends (another process
        waits here). PostgreSQL: a transaction-level advisory lock; SQLite: the database's write lock,
        which the transaction's first write takes."""
        if self.engine.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})
            return
        self.set_meta(s, f"lock:{name}", utcnow().isoformat())
        s.flush()

    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    # -- generic lookups ---------------------------------------------------
    def add(self, obj: Row, event_kind: str | None = None, subject: str = "", **payload: Any) -> Row:
        with self.session() as s:
            s.add(obj)
            s.flush()
            if event_kind:
                self.log_event(s, event_kind, subject or _subject(obj), **payload)
        return obj

    def list(self, model: type[Row], order: Any = None, limit: int | None = None) -> Sequence[Row]:
        with self.session() as s:
            q = select(model)
            if order is not None:
                q = q.order_by(order)
            if limit:
                q = q.limit(limit)
            return s.scalars(q).all()

    def get(self, model: type[Row], key: Any, what: str, hint: str) -> Row:
        with self.session() as s:
            obj = s.get(model, key)
        if obj is None:
            raise NotFoundError(f"{what} {key!r} does not exist", hint=hint)
        return obj

    def one(self, s: Session, model: type[Row], key: Any) -> Row:
        """The row ``key`` of ``model`` inside session ``s``; a missing row is a StoreError, not None."""
        obj = s.get(model, key)
        if obj is None:
            raise StoreError(
                f"{model.__name__} {key!r} vanished from the store while in use",
                hint="Another process may have changed the project; run the command again.",
            )
        return obj

    def latest(self, model: type[Row], order: Any) -> Row | None:
        with self.session() as s:
            return s.scalars(select(model).order_by(order.desc()).limit(1)).first()

    def next_release_version(self, s: Session) -> int:
        current = s.scalar(select(func.max(Release.version)))
        return (current or 0) + 1

    def alias_head(self, s: Session, alias: str) -> AliasHistory | None:
        """The alias's newest move (its current target), inside session ``s``."""
        return s.scalars(
            select(AliasHistory).where(AliasHistory.alias == alias).order_by(AliasHistory.id.desc()).limit(1)
        ).first()

    def alias_target(self, alias: str) -> int | None:
        with self.session() as s:
            row = self.alias_head(s, alias)
            return row.version if row else None

    def predictions(self, evaluation_id: int) -> Sequence[Prediction]:
        with self.session() as s:
            return s.scalars(
                select(Prediction).where(Prediction.evaluation_id == evaluation_id).order_by(Prediction.idx)
            ).all()

    def prune_requests(self, older_than: dt.datetime) -> int:
        """Delete logged requests from before ``older_than``; returns how many went."""
        with self.session() as s:
            gone: Any = s.execute(delete(RequestLog).where(RequestLog.ts < older_than))
            return int(gone.rowcount or 0)

    def requests(self, since_id: int = 0, release: int | None = None) -> Sequence[RequestLog]:
        with self.session() as s:
            q = select(RequestLog).where(RequestLog.id > since_id).order_by(RequestLog.id)
            if release is not None:
                q = q.where(RequestLog.release_version == release)
            return s.scalars(q).all()


def _subject(obj: Any) -> str:
    for attr in ("name", "id", "version"):
        value = getattr(obj, attr, None)
        if value is not None:
            return str(value)
    return ""
