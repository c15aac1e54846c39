"""The console's pages: each module here exports ``PAGES`` (a list of :class:`~filterproxy.admin.console.Page`),
found by :func:`filterproxy.admin.console.all_pages`; see :mod:`filterproxy.admin.console` for the conventions."""
