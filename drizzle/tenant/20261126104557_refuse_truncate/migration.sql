-- Hand-written (drizzle-kit generate --custom): TRUNCATE is not a row operation, so the row
-- triggers that refuse UPDATE and DELETE never see it. Statement triggers refuse it on the
-- event table, on every partition (a TRUNCATE of one partition fires only that partition's
-- triggers, and statement triggers are not cloned to partitions: the partition manager adds
-- this one to each partition it creates), on the batch ledger and on the checkpoints.
-- Retention's DETACH + DROP is not a TRUNCATE and is not affected.
CREATE OR REPLACE FUNCTION audit_truncate_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit tables are immutable: TRUNCATE of % is refused', TG_TABLE_NAME
    USING ERRCODE = '42501';
END
$$;
--> statement-breakpoint
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_truncate_refused();
--> statement-breakpoint
CREATE TRIGGER batch_ledger_no_truncate BEFORE TRUNCATE ON batch_ledger
  FOR EACH STATEMENT EXECUTE FUNCTION audit_truncate_refused();
--> statement-breakpoint
CREATE TRIGGER chain_checkpoints_no_truncate BEFORE TRUNCATE ON chain_checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION audit_truncate_refused();
--> statement-breakpoint
DO $$
DECLARE
  part regclass;
BEGIN
  FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'audit_events'::regclass
  LOOP
    EXECUTE format(
      'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %s '
      'FOR EACH STATEMENT EXECUTE FUNCTION audit_truncate_refused()', part);
  END LOOP;
END
$$;
