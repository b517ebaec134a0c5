"""The spine: stage keys, the content-addressed store and its locks, the plan, the executor and its run
records, the typed outputs stages write, the recap, signals, errors and bounded file reading."""
