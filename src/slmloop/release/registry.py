"""The release registry: aliases that point at numbered releases, moved only through the gates.

A release (``v3``) never changes once exported. An alias (``production``,
``staging``, any name) is a pointer with an append-only history: every move is
a row of :class:`~slmloop.store.AliasHistory` (when, from, to, who, why, forced
or not), so "what answered last Tuesday?" always has an answer.

- :func:`promote` moves an alias to a release after its gold evaluation passed
  every required gate (thresholds, must-beat, not worse than the best baseline);
  ``force`` overrides a refusal and says so in the history and the audit log.
- :func:`rollback` moves an alias back to the version it was promoted from, walking the promotions
  backwards (v3 → v2 → v1), never forward.

Moves of one alias are serialised (one at a time, across processes), and a move may carry the
version it expects the alias to point at: a second operator's stale click is refused, not applied.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from slmloop.data.versions import current_gold
from slmloop.errors import ConfigError, ConflictError, GateError, NotFoundError
from slmloop.evaluate.evaluate import failed_gates
from slmloop.evaluate.results import newest_evaluation
from slmloop.predict.targets import resolve_release
from slmloop.project import Project
from slmloop.release.export import verify_release
from slmloop.store import AliasHistory, Evaluation, Release

__all__ = [
    "AliasState",
    "alias_history",
    "aliases",
    "promote",
    "promoted_stack",
    "promotion_problems",
    "release_evaluation",
    "rollback",
]

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class AliasState:
    alias: str
    version: int
    since: str


def _who() -> str:
    """Who moved the alias: $SLMLOOP_USER, else the login name."""
    name = os.environ.get("SLMLOOP_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _check_alias(alias: str) -> str:
    if not _ALIAS.match(alias) or re.fullmatch(r"v?\d+|release-\d+|run-\d+|latest|base", alias):
        raise ConfigError(
            f"{alias!r} cannot be an alias",
            hint="Use lower-case letters, digits, '-' or '_', starting with a letter (e.g. production, staging); "
            "not a version (v3), run-N, latest or base.",
        )
    return alias


def release_evaluation(project: Project, release: Release) -> Evaluation | None:
    """The newest gold evaluation that speaks for ``release``: of ``release-N`` itself, else of its run.

    Only evaluations on the project's current gold version count: a gate passed on
    an older gold set says nothing about today's.
    """
    head = current_gold(project)
    if head is None:
        return None
    return newest_evaluation(project, [f"release-{release.version}", f"run-{release.run_id}"], head.id)


def _current(project: Project, alias: str) -> AliasHistory | None:
    with project.store.session() as s:
        return project.store.alias_head(s, alias)


def _move(
    project: Project,
    alias: str,
    target: int | Callable[[list[AliasHistory]], int],
    *,
    action: str,
    reason: str,
    forced: bool,
    gates: list[str],
    who: str | None = None,
    expect: int | None = None,
) -> AliasHistory:
    """Append a move of ``alias`` to ``target`` (a version, or a function of the alias's history, oldest
    first). Moves of one alias are serialised; ``expect``: the version the alias must point at now, else
    the move is refused (:class:`ConflictError`) — someone else moved it meanwhile."""
    with project.store.session() as s:
        project.store.lock(s, f"alias:{alias}")
        history = list(
            s.scalars(select(AliasHistory).where(AliasHistory.alias == alias).order_by(AliasHistory.id)).all()
        )
        head = history[-1] if history else None
        if expect is not None and (head is None or head.version != expect):
            now = f"v{head.version}" if head else "nothing"
            raise ConflictError(
                f"{alias} points at {now} now, not at v{expect}: it moved since you looked",
                hint="`slmloop releases` shows the latest moves; run the command again if it still applies.",
            )
        version = target(history) if callable(target) else target
        if head is not None and head.version == version:
            raise ConfigError(f"{alias} already points at v{version}", hint="Nothing to do.")
        row = AliasHistory(
            alias=alias,
            version=version,
            previous=head.version if head else None,
            reason=reason,
            who=who or _who(),
            action=action,
            forced=forced,
        )
        s.add(row)
        s.flush()
        project.store.log_event(
            s,
            f"alias.{action}",
            alias,
            version=version,
            previous=row.previous,
            reason=reason,
            who=row.who,
            forced=forced,
            failed_gates=gates,
        )
    return row


def promoted_stack(history: list[AliasHistory]) -> list[int]:
    """The versions an alias was promoted through that a rollback can still go back to, oldest first; the
    last is where it points now. A promotion pushes, a rollback pops: v1 → v2 → v3, rollback, rollback
    reaches v1 and no further."""
    stack: list[int] = []
    for move in history:
        if move.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != move.version:  # a move the stack does not explain starts it afresh
                stack = [move.version]
        else:
            stack.append(move.version)
    return stack


def _release_problems(project: Project, release: Release) -> list[str]:
    """Files that changed since export, and shipped files short of the parity gate."""
    import json

    changed = verify_release(project, release)
    if changed:
        return [f"the release folder changed since export ({'; '.join(changed)})"]
    minimum = project.manifest.export.parity_min_agreement
    if minimum is None:
        return []
    manifest = json.loads((project.locate(release.path) / "manifest.json").read_text())
    parity = manifest.get("parity")
    if parity is None:
        return [
            "its shipped files were not checked against the evaluated answers at export "
            "(llama-cpp-python missing, or exported by an older slmloop)"
        ]
    return [
        f"{name} ({e['engine']}) gives the evaluated answer on {e['agreement']:.1%} of {e['rows']} gold rows "
        f"(export.parity_min_agreement {minimum:.0%})"
        for name, e in parity["artifacts"].items()
        if e["agreement"] < minimum
    ]


def promotion_problems(
    project: Project, release: Release, *, check_files: bool = True
) -> tuple[Evaluation | None, list[str]]:
    """What stands between ``release`` and an alias today: its evaluation on the current gold set and every
    problem found (no such evaluation, required gates it fails, files changed since export, GGUF parity).

    ``check_files=False`` skips re-hashing the release folder (for listings; a promotion always checks).
    """
    ev = release_evaluation(project, release)
    if ev is None:
        problems = [f"v{release.version} has no evaluation on the current gold set"]
    else:
        problems = failed_gates(ev, project.manifest.eval)  # today's gates, not those of the day it was evaluated
    if check_files:
        problems += _release_problems(project, release)
    return ev, problems


def promote(
    project: Project,
    ref: str | int,
    alias: str,
    *,
    reason: str,
    force: bool = False,
    who: str | None = None,
    expect: int | None = None,
) -> AliasHistory:
    """Point ``alias`` at release ``ref`` if its gold evaluation passes every required gate.

    Refused (:class:`GateError`) when the release was never evaluated on the
    current gold set or failed a required gate; ``force`` moves it anyway and
    records the failed gates next to the move. ``who`` defaults to $SLMLOOP_USER or the login name;
    ``expect``: the version the alias must point at now (else :class:`ConflictError`).
    """
    _check_alias(alias)
    if not reason.strip():
        raise ConfigError("a promotion needs a reason", hint='Add --reason "why this version".')
    release = resolve_release(project, ref)
    current = _current(project, alias)
    if current is not None and current.version == release.version and expect in (None, current.version):
        raise ConfigError(f"{alias} already points at v{release.version}", hint="Nothing to do.")
    ev, problems = promotion_problems(project, release)
    if problems and not force:
        fix = (
            f"Run `slmloop eval --model v{release.version}` first."
            if ev is None
            else "Fix the model, or relax eval.gates / eval.compare in slmloop.yaml, "
            "or pass --force (recorded in the audit log)."
        )
        raise GateError(
            f"v{release.version} cannot be promoted to {alias}: " + "; ".join(problems),
            hint=fix,
        )
    return _move(
        project,
        alias,
        release.version,
        action="promote",
        reason=reason,
        forced=bool(problems),
        gates=problems,
        who=who,
        expect=expect,
    )


def rollback(
    project: Project, alias: str, *, reason: str = "", who: str | None = None, expect: int | None = None
) -> AliasHistory:
    """Point ``alias`` back at the version it was promoted from: rollbacks walk the promotions backwards
    (v3 → v2 → v1), never forward. Refused when there is nothing earlier, when the release to go back to
    changed since export, and (``expect``) when the alias no longer points where the caller saw it."""
    current = _current(project, alias)
    if current is None:
        raise NotFoundError(f"alias {alias!r} does not exist", hint="`slmloop releases` lists the aliases.")

    def back(history: list[AliasHistory]) -> int:
        stack = promoted_stack(history)
        if len(stack) < 2:
            raise ConfigError(
                f"{alias} has no earlier version to roll back to: v{history[-1].version} is the first it was "
                "promoted to, or every earlier promotion was rolled back already",
                hint=f"Promote another version instead: slmloop promote vN --to {alias} --reason ….",
            )
        target = resolve_release(project, stack[-2])
        changed = verify_release(project, target)
        if changed:
            raise GateError(
                f"v{target.version} cannot be rolled back to: its folder changed since export ({'; '.join(changed)})",
                hint="Export the run again and promote the new release.",
            )
        return target.version

    return _move(
        project,
        alias,
        back,
        action="rollback",
        reason=reason or f"rollback from v{current.version}",
        forced=False,
        gates=[],
        who=who,
        expect=expect,
    )


def aliases(project: Project) -> list[AliasState]:
    """Every alias and the version it points at now, by name."""
    with project.store.session() as s:
        rows = s.scalars(select(AliasHistory).order_by(AliasHistory.id)).all()
    now: dict[str, AliasHistory] = {}
    for r in rows:
        now[r.alias] = r
    return [AliasState(a, r.version, f"{r.ts:%Y-%m-%d %H:%M}") for a, r in sorted(now.items())]


def alias_history(project: Project, alias: str | None = None) -> list[AliasHistory]:
    """Every move, newest first (of one alias, or all)."""
    with project.store.session() as s:
        q = select(AliasHistory).order_by(AliasHistory.id.desc())
        if alias is not None:
            q = q.where(AliasHistory.alias == alias)
        return list(s.scalars(q).all())
