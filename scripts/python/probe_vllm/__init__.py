"""Python code that probe puts on a launched vLLM server's PYTHONPATH."""
