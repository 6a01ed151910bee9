-- A job's place in its conversation when it is not its own id: a job that carries on
-- another's work (the delivery of a reply, and that delivery's retries, which are new
-- jobs) takes the place of the job that generated the reply, so no later event of the
-- conversation is processed, and its reply sent, before it. NULL: the job's id.
ALTER TABLE queue_jobs ADD COLUMN order_pos bigint;
