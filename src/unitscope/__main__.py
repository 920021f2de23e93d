"""`python -m unitscope ...`: see `unitscope.cli`."""

from unitscope.cli import main

raise SystemExit(main())
