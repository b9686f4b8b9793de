-- A page of QuickTests, best val_loss first, read from the summaries alone: no series is read.
-- migrations/0004.summary-index.py indexes this very expression for the rows this WHERE keeps,
-- so the page costs an index scan and its own rows, whatever the table's size. (Runs that
-- never logged val_loss hold null there; rows without a summary, nothing: both are left out.)
SELECT id, name, status, training_history_json #> '{summary,val_loss,best}' AS best_val_loss
  FROM ml_platform_quicktest
 WHERE jsonb_typeof(training_history_json #> '{summary,val_loss,best}') = 'number'
 ORDER BY training_history_json #> '{summary,val_loss,best}'
 LIMIT 20;
