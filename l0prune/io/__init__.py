"""Files: exported state dicts, compressed checkpoints, Hugging Face folders, layer problems as
files."""
