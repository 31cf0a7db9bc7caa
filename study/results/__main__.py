"""`python -m study.results`: see study/results/rebuild.py."""

import sys

from study.results.rebuild import main

sys.exit(main())
