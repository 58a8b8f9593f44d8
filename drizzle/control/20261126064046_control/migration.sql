CREATE SCHEMA "auditgraph";
--> statement-breakpoint
CREATE TABLE "auditgraph"."control_migrations" (
	"name" text PRIMARY KEY,
	"hash" text NOT NULL,
	"applied_at" timestamp(3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "auditgraph"."tenant_migrations" (
	"tenant_id" varchar(40),
	"name" text,
	"hash" text NOT NULL,
	"applied_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "tenant_migrations_pkey" PRIMARY KEY("tenant_id","name")
);
--> statement-breakpoint
CREATE TABLE "auditgraph"."tenants" (
	"tenant_id" varchar(40) PRIMARY KEY,
	"schema_name" varchar(63) NOT NULL UNIQUE,
	"created_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	"migration" text,
	"migrated_at" timestamp(3) with time zone,
	"retention_days" integer
);
