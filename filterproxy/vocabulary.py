"""The shared vocabulary: names every layer uses and nothing else defines.

Categories, user-facing languages, identifier patterns and the error types of configuration.
This module imports nothing from filterproxy, so config, lists, match, policy, metrics and the data
paths can all depend on it without forming a cycle (dependencies point one way: vocabulary → config
→ lists/match → policy → dns/http → app → runner/cli).
"""

from __future__ import annotations

import re

# The languages user-facing text comes in (block page, policy display names); the first is the default.
LANGUAGES: tuple[str, ...] = ("vi", "en")

# Every category a list or a policy may name. Metric label sets are derived from this set.
KNOWN_CATEGORIES: frozenset[str] = frozenset(
    {
        "adult",
        "gambling",
        "violence",
        "drugs",
        "dating",
        "social",
        "games",
        "chat",
        "bypass",
        "malware",
        "phishing",
        "illegal",
        "ads",
        "shortener",
        "filehosting",
        "warez",
        "hacking",
        "audio-video",
        "webmail",
        "lingerie",
        "sect",
        "dangerous_material",
        "remote-control",
        "ai",
        "search",
        "custom",
    }
)

# Ids of lists and groups in the config (they appear in verdicts, EDE text and metric labels).
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Ids of sources in a sources catalogue (they also name the cache file on disk).
SOURCE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Device ids of DoH clients: the last segment of /dns-query/<id> (URL-safe as it is; case-insensitive).
DOH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,63}$")


class ConfigError(Exception):
    """An invalid configuration: the message names file:line and what was expected."""
