"""``filterproxy publish status``: what a repository publishes now, what waits for signatures, and what
expires soon (a cron or a monitoring check can act on its exit status before gateways refuse updates)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from filterproxy.distribution import publish

ONLINE_ROLES = ("snapshot", "timestamp")
DEFAULT_ONLINE_WARNING = timedelta(hours=6)  # the timestamp lives 1 day: a commit cron that stopped shows here


@dataclass
class RoleState:
    role: str
    version: int | None  # published; None when never published
    expires: str | None
    seconds_left: int | None
    staged_version: int | None = None
    signatures: int = 0  # of the staged version, by keys of the role
    threshold: int = 1


@dataclass
class ListState:
    list: str
    role: str
    category: str
    format: str
    version: int
    kind: str  # full, or delta (a base and its segments)
    segments: int
    bytes: int


@dataclass
class Status:
    repository: str
    roles: list[RoleState] = field(default_factory=list)
    lists: list[ListState] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _threshold(repo: publish.Repository, role: str) -> int:
    root = repo.current("root")
    if role in publish.TOP_ROLES:
        return int(root.signed.roles[role].threshold) if root is not None else 1
    top = repo.current("targets")
    roles = top.signed.delegations.roles if top is not None and top.signed.delegations else None
    return int(roles[role].threshold) if roles and role in roles else 1


def _role(repo: publish.Repository, role: str, now: datetime) -> RoleState:
    pub, staged = repo.published(role), repo.staged(role)
    state = RoleState(role, None, None, None, threshold=_threshold(repo, role))
    if pub is not None:
        state.version = pub.signed.version
        state.expires = pub.signed.expires.isoformat()
        state.seconds_left = int((pub.signed.expires - now).total_seconds())
    if staged is not None:
        state.staged_version = staged.signed.version
        keys = publish._authorised_keys(repo, role, staged)
        state.signatures = sum(1 for kid in staged.signatures if kid in keys)
    return state


def _lists(role: str, md: Any) -> list[ListState]:
    by_list: dict[str, list[Any]] = {}
    for tf in md.signed.targets.values():
        if "list" in tf.custom:
            by_list.setdefault(str(tf.custom["list"]), []).append(tf)
    out = []
    for name, files in sorted(by_list.items()):
        top = max(files, key=lambda tf: int(tf.custom["version"]))
        delta = any(tf.custom.get("kind") == "base" for tf in files)
        out.append(
            ListState(
                list=name,
                role=role,
                category=str(top.custom.get("category", "")),
                format=str(top.custom.get("format", "")),
                version=int(top.custom["version"]),
                kind="delta" if delta else "full",
                segments=sum(1 for tf in files if tf.custom.get("kind") == "add"),
                bytes=sum(int(tf.length) for tf in files),
            )
        )
    return out


def status(
    repo: publish.Repository,
    *,
    offline_warning: timedelta = publish.EXPIRY_WARNING,
    online_warning: timedelta = DEFAULT_ONLINE_WARNING,
) -> Status:
    """The repository's roles and lists as published, and a warning per role that is expired, expires
    within its warning (offline-signed roles: ``offline_warning``; snapshot and timestamp, re-signed by
    every commit: ``online_warning``), was never published, or has a staged version waiting."""
    now = publish._now()
    out = Status(repo.path)
    top = repo.published("targets")
    delegated = sorted(top.signed.delegations.roles or {}) if top is not None and top.signed.delegations else []
    for role in (*publish.TOP_ROLES, *delegated):
        st = _role(repo, role, now)
        out.roles.append(st)
        soon = online_warning if role in ONLINE_ROLES else offline_warning
        if st.seconds_left is None:
            out.warnings.append(f"{role}: never published (sign it, then 'publish commit')")
        elif st.seconds_left <= 0:
            out.warnings.append(f"{role} v{st.version}: EXPIRED {st.expires}: gateways refuse every update")
        elif st.seconds_left < soon.total_seconds():
            how = "run 'publish commit'" if role in ONLINE_ROLES else f"re-sign it ('publish sign --role {role}')"
            out.warnings.append(f"{role} v{st.version}: expires {st.expires} ({_left(st.seconds_left)} left): {how}")
        if st.staged_version is not None:
            out.warnings.append(
                f"{role} v{st.staged_version}: staged, {st.signatures} of {st.threshold} signature(s)"
                + (": run 'publish commit'" if st.signatures >= st.threshold else "")
            )
        md = repo.published(role)
        if md is not None and role not in ("root", *ONLINE_ROLES):
            out.lists.extend(_lists(role, md))
    return out


def _left(seconds: int) -> str:
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def render(st: Status) -> str:
    lines = [f"repository {st.repository}", "", "role          version  expires                    left"]
    for r in st.roles:
        left = _left(r.seconds_left) if r.seconds_left is not None and r.seconds_left > 0 else "-"
        pub = f"v{r.version}" if r.version is not None else "-"
        staged = f"   staged v{r.staged_version}: {r.signatures}/{r.threshold} signatures" if r.staged_version else ""
        lines.append(f"{r.role:<13} {pub:<8} {r.expires or '-':<26} {left}{staged}")
    lines += ["", "list                          role          category     version  kind            bytes"]
    for li in st.lists:
        kind = f"delta +{li.segments}" if li.kind == "delta" else "full"
        lines.append(f"{li.list:<29} {li.role:<13} {li.category:<12} {li.version:<8} {kind:<13} {li.bytes:>9,}")
    if not st.lists:
        lines.append("(no lists published)")
    lines.append("")
    lines += [f"warning: {w}" for w in st.warnings] or ["ok: every role published and valid beyond its warning"]
    return "\n".join(lines)
