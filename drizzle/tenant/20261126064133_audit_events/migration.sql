-- Hand edit (drizzle-kit cannot express partitioning, drizzle-orm issue #2854):
-- audit_events is PARTITION BY RANGE (occurred_at), one partition per UTC month. Partitions are
-- created by the service (src/db/partitions.ts) ahead of time and on demand, each as a plain
-- table then ATTACHed, never inside a batch transaction. There is deliberately no DEFAULT
-- partition. The snapshot still matches: `npm run db:generate` reports no changes.
CREATE TABLE "audit_events" (
	"id" uuid,
	"occurred_at" timestamp(3) with time zone,
	"received_at" timestamp(3) with time zone NOT NULL,
	"event_type" varchar(100) NOT NULL,
	"category" varchar(50) NOT NULL,
	"action" varchar(50) NOT NULL,
	"outcome" varchar(16) NOT NULL,
	"correlation_id" varchar(255) NOT NULL,
	"actor_type" varchar(100) NOT NULL,
	"actor_id" varchar(255) NOT NULL,
	"actor_ip" varchar(45),
	"resource_type" varchar(100) NOT NULL,
	"resource_id" varchar(255) NOT NULL,
	"resource_name" varchar(255),
	"parent_event_id" uuid,
	"severity" varchar(20),
	"duration_ms" integer,
	"error_code" varchar(50),
	"error_message" varchar(4096),
	"namespace" varchar(253),
	"cluster_id" varchar(255),
	"trace_id" varchar(255),
	"span_id" varchar(255),
	"data" jsonb,
	"batch_id" uuid NOT NULL,
	CONSTRAINT "audit_events_pkey" PRIMARY KEY("occurred_at","id"),
	CONSTRAINT "audit_events_outcome_check" CHECK ("outcome" in ('SUCCESS', 'FAILURE', 'PENDING')),
	CONSTRAINT "audit_events_duration_check" CHECK ("duration_ms" >= 0)
) PARTITION BY RANGE ("occurred_at");
--> statement-breakpoint
CREATE TABLE "batch_ledger" (
	"batch_id" uuid PRIMARY KEY,
	"committed_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	"event_count" integer NOT NULL,
	"stored_count" integer NOT NULL,
	"duplicate_positions" integer[] NOT NULL,
	"instance_id" varchar(100) NOT NULL
);
--> statement-breakpoint
CREATE INDEX "audit_events_id_idx" ON "audit_events" ("id");--> statement-breakpoint
CREATE INDEX "audit_events_correlation_idx" ON "audit_events" ("correlation_id","occurred_at","id");--> statement-breakpoint
CREATE INDEX "audit_events_event_type_idx" ON "audit_events" ("event_type","occurred_at","id");--> statement-breakpoint
CREATE INDEX "audit_events_actor_idx" ON "audit_events" ("actor_type","actor_id","occurred_at","id");--> statement-breakpoint
CREATE INDEX "audit_events_resource_idx" ON "audit_events" ("resource_type","resource_id","occurred_at","id");--> statement-breakpoint
CREATE INDEX "audit_events_data_idx" ON "audit_events" USING gin ("data" jsonb_path_ops);