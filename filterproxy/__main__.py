from filterproxy.cli import main

raise SystemExit(main())
