"""The live overrides as YAML for config-as-code: group → ``allow`` / ``block`` lists.

Each name carries a comment with who set it and until when, so a person can move a lasting override
into the group's file (``groups/<id>.yaml``) and remove it from the live state.
"""

from __future__ import annotations

import json

from filterproxy.state.model import Override


def overrides_yaml(overrides: list[Override]) -> str:
    """``groups: {group: {allow: [...], block: [...]}}`` with one comment per name (YAML, stable order)."""
    lines = ["# live overrides (filterproxy control API); expiry times are UTC", "groups:"]
    by_group: dict[str, list[Override]] = {}
    for o in sorted(overrides, key=lambda o: (o.group, o.action, o.name, o.id)):
        by_group.setdefault(o.group, []).append(o)
    if not by_group:
        return "\n".join(lines) + " {}\n"
    for group, items in by_group.items():
        lines.append(f"  {json.dumps(group)}:")
        for action in ("allow", "block"):
            names = [o for o in items if o.action == action]
            if not names:
                continue
            lines.append(f"    {action}:")
            for o in names:
                until = o.expires_at.strftime("%Y-%m-%d %H:%M") if o.expires_at else "removed"
                lines.append(f"      - {json.dumps(o.name)}  # override {o.id} by {o.created_by}, until {until}")
    return "\n".join(lines) + "\n"
