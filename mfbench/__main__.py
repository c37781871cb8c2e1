from mfbench.shells.cli import main

raise SystemExit(main())
