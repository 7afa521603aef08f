"""Renderers of results: terminal and Markdown tables (JSON, HTML come with the audit reports)."""
