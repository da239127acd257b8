from hoarfrost.gen.cli import main

raise SystemExit(main())
