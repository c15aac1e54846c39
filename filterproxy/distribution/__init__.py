"""List distribution from a ministry and its provinces to school gateways over TUF (The Update Framework).

:mod:`.publish` manages the publisher's repository (roles, thresholds, delegations, consistent
snapshots), :mod:`.delta` the base + segments of big lists, :mod:`.gateway` updates a gateway with
``tuf.ngclient`` and installs what it verified, :mod:`.cli` is ``filterproxy publish``. The
``distribution:`` config section, the ``filterproxy.distribution`` logger and the
``filterproxy_distribution_*`` metrics belong here; docs/distribution.md describes the whole.
"""
