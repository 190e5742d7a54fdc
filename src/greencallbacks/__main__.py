from greencallbacks.cli import main

raise SystemExit(main())
