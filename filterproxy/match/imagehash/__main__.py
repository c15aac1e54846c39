"""``python -m filterproxy.match.imagehash FILE...``: MD5/SHA-1/SHA-256 and PDQ of each file, as JSON lines."""

from filterproxy.match.imagehash.cli import main

raise SystemExit(main())
