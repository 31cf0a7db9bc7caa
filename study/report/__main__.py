"""`python -m study.report`: see study/report/document.py."""

import sys

from study.report.document import main

sys.exit(main())
