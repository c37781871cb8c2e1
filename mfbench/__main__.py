from mfbench.cli import main

raise SystemExit(main())
