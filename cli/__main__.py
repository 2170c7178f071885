"""``python -m icmh.cli``: the ``icmh`` command."""

from icmh.cli.main import main

raise SystemExit(main())
