"""metrics-ingest: the command line and local stack around the ingestion function."""
