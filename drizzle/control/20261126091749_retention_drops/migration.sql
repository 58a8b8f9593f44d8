CREATE TABLE "auditgraph"."retention_drops" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	"tenant_id" varchar(40) NOT NULL,
	"month" timestamp(3) with time zone NOT NULL,
	"partition_name" varchar(63) NOT NULL,
	"row_count" bigint NOT NULL,
	"chain_seq" bigint NOT NULL,
	"chain_hash" varchar(64),
	"checkpoint" jsonb,
	"retention_days" integer NOT NULL,
	"dropped_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	"instance_id" varchar(100) NOT NULL
);
--> statement-breakpoint
CREATE INDEX "retention_drops_tenant_idx" ON "auditgraph"."retention_drops" ("tenant_id","month");