from fastmc.cli import main

raise SystemExit(main())
