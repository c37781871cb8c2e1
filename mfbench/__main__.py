from mfbench.shells.cli.main import main

raise SystemExit(main())
