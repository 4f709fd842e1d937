"""The built-in models: the digits MLP and CNN, the built-in language model, and their cache."""
