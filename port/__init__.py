"""PyTorch -> jaxmatte weight conversion: safe checkpoint reading, declarative key tables, the `convert.py` CLI;
`export.py`: a saved model's forward pass as one StableHLO file."""
