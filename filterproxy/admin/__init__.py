"""The control API (issue #17): a Starlette app served by hypercorn inside ``filterproxy run``.

:mod:`.server` builds the app from the route tables of the ``api_*`` modules (one module per area, so
reviews and statistics plug in the same way) and serves it on ``server.admin_listen``; :mod:`.auth` checks
bearer tokens and login sessions (CSRF, lockout); :mod:`.fields` validates bodies and query strings;
:mod:`.errors` turns every failure into ``{"error", "detail"}``. Store calls run in a thread (house rule 9).
"""
