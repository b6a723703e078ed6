"""Ray Data plans, Parquet schemas, storage, QC and exporters."""
