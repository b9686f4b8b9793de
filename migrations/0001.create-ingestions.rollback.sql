DROP TABLE IF EXISTS training_metrics_ingestions;
