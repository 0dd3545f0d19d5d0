-- How many batches of outcomes each worker has stored, counted in the batch's own transaction:
-- a worker that lost the answer to a commit (the server went away) sends the batch again, and
-- this count tells it whether the first commit landed, so no batch is stored twice.
ALTER TABLE workers ADD COLUMN written BIGINT NOT NULL DEFAULT 0;
