"""The resolver's memo of ``engine.decide``: one verdict per (group, name), shared by the chain links that
ask the policy engine (the question's policy link and the answer check). The links only ask; the
decision itself stays in ``Engine.decide`` (CONTRIBUTING.md rule 1).
"""

from __future__ import annotations

from filterproxy.verdict import Reason, Verdict


class Decisions:
    """``engine.decide`` with a memo per group: the same names come back all the time (short-TTL names,
    blocked names whose answers expired, CNAME targets shared by many names) and a decision costs
    10-40 µs. Dropped with the packed replies — on a snapshot swap or config reload, and when a group's
    schedules change — so a memoised verdict is never staler than a packed reply."""

    def __init__(self, engine, size: int = 65536):
        self.engine = engine
        self.size = size
        self.memo: dict[str, dict[str, Verdict]] = {}

    def decide(self, name: str, group: str, client=None) -> Verdict:
        if client is not None:  # a paused client (control API): its own verdict, not the group's memo
            return self.engine.decide(client, name, group=group, canonical=True, ip_literals=False)
        m = self.memo.get(group)
        if m is None:
            m = self.memo.setdefault(group, {})
        v = m.get(name)
        if v is None:
            # names from wire.policy_name (questions, CNAME targets) and addresses in their text form; an
            # answer's address is no IP literal a client typed: IP lists apply, block_ip_literals does not
            v = self.engine.decide(None, name, group=group, canonical=True, ip_literals=False)
            if v.reason is not Reason.ERROR:  # errors are never remembered
                if len(m) >= self.size:
                    m.clear()
                m[name] = v
        return v

    def clear(self, group: str | None = None) -> None:
        if group is None:
            self.memo = {}
        else:
            self.memo.pop(group, None)
