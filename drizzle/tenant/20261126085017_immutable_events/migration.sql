-- Hand-written (drizzle-kit generate --custom): stored audit events never change.
-- UPDATE and DELETE of rows are refused for everyone, the table owner and superusers included
-- (grants restrict nothing for them). The row triggers on the partitioned table are cloned to
-- every partition, present and future. Retention removes whole months with
-- DETACH PARTITION + DROP TABLE, which is DDL and not affected.
CREATE OR REPLACE FUNCTION audit_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit events are immutable: % is refused', TG_OP USING ERRCODE = '42501';
END
$$;
--> statement-breakpoint
CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_immutable();
--> statement-breakpoint
CREATE OR REPLACE FUNCTION batch_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the batch ledger is append-only: % is refused', TG_OP USING ERRCODE = '42501';
END
$$;
--> statement-breakpoint
CREATE TRIGGER batch_ledger_immutable BEFORE UPDATE OR DELETE ON batch_ledger
  FOR EACH ROW EXECUTE FUNCTION batch_ledger_immutable();
