from quicmig.cli import main

raise SystemExit(main())
