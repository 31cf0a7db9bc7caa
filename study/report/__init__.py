"""A study's report: the numbers (summary.py, pure pandas), their text (render.py), the
figures (plots.py), and report.md with its CSVs (document.py, `python -m study.report`)."""
