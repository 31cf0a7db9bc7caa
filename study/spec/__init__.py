"""What a study is: its presets and StudyConfig (presets.py), its search space (space.py), and
its record in study.json, read back as a study file (record.py). Plain data: no Ray."""
