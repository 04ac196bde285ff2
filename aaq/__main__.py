from aaq.cli import main

raise SystemExit(main())
