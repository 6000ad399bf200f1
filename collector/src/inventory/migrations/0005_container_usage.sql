-- A container's latest resource sample (its agent's `resources`
-- events, every settings.resources_report_s): when, CPU as a percentage
-- of one core over the sampling window, memory charged and its limit,
-- tasks, and OOM kills since the container started. NULL: no sample
-- (or, for the limit, none set).
ALTER TABLE containers ADD COLUMN usage_at BIGINT;
ALTER TABLE containers ADD COLUMN cpu_percent BIGINT;
ALTER TABLE containers ADD COLUMN memory_bytes BIGINT;
ALTER TABLE containers ADD COLUMN memory_limit_bytes BIGINT;
ALTER TABLE containers ADD COLUMN pids BIGINT;
ALTER TABLE containers ADD COLUMN oom_kills BIGINT;
