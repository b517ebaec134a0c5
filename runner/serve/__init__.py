"""`runner serve`: an OpenAI-compatible server over the store's bases and adapters, with a fine-tuning
job queue. Imported only by `runner serve`: fastapi, torch and peft stay off the light path."""
