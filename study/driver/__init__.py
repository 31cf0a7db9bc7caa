"""Running a study on Ray: the checks before anything runs and the prepared study
(prepare.py), the Tuner (tuner.py), one trial's folds (trial.py), Optuna and ASHA
(search.py), where fold workers go (placement.py, memory.py), the study folder's lock and
stop (guard.py), the driver's Tune callbacks (callbacks.py, checkpoints.py) and the test
estimate at the end (holdout.py)."""
