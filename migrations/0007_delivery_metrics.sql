-- /metrics reads delivery results over a recent window.
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);
