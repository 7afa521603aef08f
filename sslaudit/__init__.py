"""sslaudit: how cheaply can an SSL encoder served behind an API be stolen, and which defence stops it."""
__version__ = "0.1.0"
