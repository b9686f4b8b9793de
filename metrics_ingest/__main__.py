from metrics_ingest.cli import main

raise SystemExit(main())
