-- When a folder's breaker tripped (sync_phase = 'flagged'): the worker retries it after a
-- cool-down (SyncTuning.flag_cooldown) instead of leaving it flagged for good.
ALTER TABLE folders ADD COLUMN flagged_at timestamptz;
UPDATE folders SET flagged_at = updated_at WHERE sync_phase = 'flagged';
