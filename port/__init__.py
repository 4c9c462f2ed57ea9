"""PyTorch -> jaxmatte weight conversion: safe checkpoint reading, declarative key tables, the `convert.py` CLI."""
