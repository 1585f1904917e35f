"""``python -m flwr_vproto.report ...``: the package's command line (:func:`flwr_vproto.report.cli.main`)."""

from .cli import main

raise SystemExit(main())
