"""`python -m study.stats`: see study/stats/cli.py."""

import sys

from study.stats.cli import main

sys.exit(main())
