"""The report writer and its pictures (one look for a run's report and `runner compare`), and the
trackers `logging.report_to` names."""
