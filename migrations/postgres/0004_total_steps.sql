-- trials.total_steps: how many optimiser steps the trial trains for, written by its runner when
-- training starts (the count depends on the training set's size when the grid gives epochs, so
-- it is not known when the trial is registered). NULL until then. With `steps` it gives a
-- running trial's progress and, with `wall_s`, the time it has left (`runner serve` shows both):
--
--   psql -c "select id, steps, total_steps from trials where status = 'running'"
ALTER TABLE trials ADD COLUMN total_steps BIGINT;
