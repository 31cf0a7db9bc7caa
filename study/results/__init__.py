"""A study's results: the trials' fold logs (foldlog.py), the tables derived from them and
from Tune's reports (tables.py), those tables on disk, one file per trial, and read back typed
(files.py: `load`), rebuilt from the experiment (rebuild.py, `python -m study.results`),
and a trial's models exported (export.py)."""
