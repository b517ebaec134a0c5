"""The fine-tuning job queue, apart from its routes (runner/serve/routes/jobs.py): the queue of `runner run`
processes and its store, what a job request becomes (a spec, from OpenAI's fields or given whole), and
what a job leaves (events, result files, checkpoints, progress)."""
