"""A rule listed by several lists keeps every list: the legal one blocks for every group, whatever the order.

The configuration lists the same entries first in a list whose category the group allows (``adult``, not
blocked by ``grown``) or in an allow source, then in the legal list: domains, IP addresses, URL rules, full
URL hashes, image hashes. The verdict must name the legal list (reason ``legal``), not the first list that
had the entry.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_config
from test_imagehash import jpeg, natural

from filterproxy.config import load_config
from filterproxy.lists.snapshot import build_snapshot, unpack
from filterproxy.match.imagehash import hash_image_bytes
from filterproxy.match.urlhash import expression_hash
from filterproxy.policy.engine import Engine
from filterproxy.verdict import Action, Reason

SHARED_HASH = expression_hash("hashed.example/secret/").hex()
LEGAL_ONLY_HASH = expression_hash("legal-hash.example/").hex()
EXACT_PIC, PDQ_PIC = (hash_image_bytes(jpeg(natural(np.random.default_rng(seed), 320, 240))) for seed in (5, 6))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    (tmp / "adult.txt").write_text("both.example\n203.0.113.7\nadult-only.example\n")
    (tmp / "adult-urls.txt").write_text(
        "urls.example/shared/\nurls.example/shared/deeper/\nm.shadow.example/a\nadult-url.example/x\n"
    )
    (tmp / "adult-hashes.txt").write_text(f"{SHARED_HASH}\n")
    (tmp / "approved.txt").write_text("approved-too.example\n")
    (tmp / "legal.txt").write_text("both.example\n203.0.113.7\napproved-too.example\n")
    (tmp / "legal-urls.txt").write_text("urls.example/shared/\nshadow.example/\n")
    (tmp / "legal-hashes.txt").write_text(f"{SHARED_HASH}\n{LEGAL_ONLY_HASH}\n")
    pictures = f"sha256:{EXACT_PIC.sha256},item-e\npdq:{PDQ_PIC.pdq},item-p\n"
    (tmp / "adult-images.txt").write_text(pictures)
    (tmp / "legal-images.txt").write_text(pictures)
    cfg = write_config(
        tmp,
        """
        timezone: Asia/Ho_Chi_Minh
        default_group: grown
        lists:
          - {id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}
          - {id: adult-urls, category: adult, format: urls, path: adult-urls.txt}
          - {id: adult-hashes, category: adult, format: urlhash, path: adult-hashes.txt}
          - {id: adult-images, category: adult, format: imagehash, path: adult-images.txt}
          - {id: approved, category: education, format: domains, allow: true, path: approved.txt}
          - {id: national, category: illegal, format: domains, match: subdomains, legal: true, path: legal.txt}
          - {id: national-urls, category: illegal, format: urls, legal: true, path: legal-urls.txt}
          - {id: national-hashes, category: illegal, format: urlhash, legal: true, path: legal-hashes.txt}
          - {id: national-images, category: illegal, format: imagehash, legal: true, path: legal-images.txt}
    """,
        {
            "grown": "name: Grown\ntone: adult\nblock_categories: [malware]\n",
            "kid": "name: Kid\ntone: child\nblock_categories: [adult]\n",
        },
    )
    config = load_config(str(cfg))
    return Engine(config, build_snapshot(config.lists))


@pytest.mark.parametrize(
    "host,url,list_id",
    [
        ("both.example", None, "national"),  # domain in adult, then legal
        ("www.both.example", None, "national"),
        ("approved-too.example", None, "national"),  # in an allow source first, then legal
        ("203.0.113.7", None, "national"),  # IP address in adult, then legal
        ("urls.example", "http://urls.example/shared/page", "national-urls"),  # same URL rule in both
        ("urls.example", "http://urls.example/shared/deeper/page", "national-urls"),  # a longer adult rule too
        ("m.shadow.example", "http://m.shadow.example/a/b", "national-urls"),  # adult: a more specific host
        ("hashed.example", "http://hashed.example/secret/page.html", "national-hashes"),  # same full hash
        ("legal-hash.example", "http://legal-hash.example/", "national-hashes"),
    ],
)
@pytest.mark.parametrize("group", ["grown", "kid"])
def test_legal_list_blocks_whatever_list_came_first(engine, group, host, url, list_id):
    v = engine.decide("10.0.0.1", host, url, group=group)
    assert (v.action, v.reason, v.list_id, v.legal) == (Action.BLOCK, Reason.LEGAL, list_id, True), v


@pytest.mark.parametrize(
    "host,url",
    [
        ("adult-only.example", None),
        ("adult-url.example", "http://adult-url.example/x"),
    ],
)
def test_the_first_list_still_counts_where_it_is_alone(engine, host, url):
    """Control: the adult lists work, blocked for ``kid`` and allowed for ``grown``."""
    assert engine.decide("10.0.0.1", host, url, group="kid").reason is Reason.CATEGORY
    assert engine.decide("10.0.0.1", host, url, group="grown").action is Action.ALLOW


@pytest.mark.parametrize("hashes", [EXACT_PIC, PDQ_PIC], ids=["sha256", "pdq"])
def test_picture_in_two_lists_is_the_legal_lists(engine, hashes):
    """The image index answers with one record: the legal list's (its verdict and its hotline report)."""
    snap = engine.snapshot
    m = snap.images.match(hashes)
    assert m is not None and snap.lists[unpack(m.record)[0]].id == "national-images", m
