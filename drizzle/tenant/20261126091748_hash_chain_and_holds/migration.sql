CREATE TABLE "chain_checkpoints" (
	"month" timestamp(3) with time zone,
	"seq" bigint,
	"hash" bytea NOT NULL,
	"signed_at" timestamp(3) with time zone NOT NULL,
	"key_id" varchar(64) NOT NULL,
	"signature" bytea NOT NULL,
	CONSTRAINT "chain_checkpoints_pkey" PRIMARY KEY("month","seq")
);
--> statement-breakpoint
CREATE TABLE "chain_heads" (
	"month" timestamp(3) with time zone PRIMARY KEY,
	"seq" bigint NOT NULL,
	"hash" bytea,
	"updated_at" timestamp(3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "legal_holds" (
	"id" uuid PRIMARY KEY,
	"correlation_id" varchar(255),
	"occurred_from" timestamp(3) with time zone,
	"occurred_to" timestamp(3) with time zone,
	"reason" varchar(1000) NOT NULL,
	"placed_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	"placed_by" varchar(200) NOT NULL,
	"released_at" timestamp(3) with time zone,
	"released_by" varchar(200),
	"release_reason" varchar(1000),
	CONSTRAINT "legal_holds_scope_check" CHECK ("correlation_id" is not null or ("occurred_from" is not null and "occurred_to" is not null))
);
--> statement-breakpoint
ALTER TABLE "audit_events" ADD COLUMN "chain_seq" bigint;--> statement-breakpoint
ALTER TABLE "audit_events" ADD COLUMN "prev_hash" bytea;--> statement-breakpoint
ALTER TABLE "audit_events" ADD COLUMN "hash" bytea;--> statement-breakpoint
CREATE INDEX "audit_events_chain_idx" ON "audit_events" ("chain_seq");--> statement-breakpoint
-- Added by hand: signed checkpoints are evidence, so they are append-only like the events.
CREATE OR REPLACE FUNCTION chain_checkpoints_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'chain checkpoints are append-only: % is refused', TG_OP USING ERRCODE = '42501';
END
$$;
--> statement-breakpoint
CREATE TRIGGER chain_checkpoints_immutable BEFORE UPDATE OR DELETE ON chain_checkpoints
  FOR EACH ROW EXECUTE FUNCTION chain_checkpoints_immutable();
