"""Turn raw datasets into prepared em3rec dataset folders (Parquet + item content)."""
