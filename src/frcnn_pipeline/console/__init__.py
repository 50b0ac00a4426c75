"""What a run shows on the console, below every other layer: progress displays and the DETAIL mark for lines
that go to the log file only. Kedro's side of it (the filter, the run's log file) is framework/console.py."""
