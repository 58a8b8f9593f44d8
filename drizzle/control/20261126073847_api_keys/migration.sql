CREATE TABLE "auditgraph"."api_keys" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	"key_hash" varchar(64) NOT NULL UNIQUE,
	"prefix" varchar(16) NOT NULL,
	"tenant_id" varchar(40),
	"scopes" text[] NOT NULL,
	"label" varchar(100) NOT NULL,
	"created_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	"last_used_at" timestamp(3) with time zone,
	"expires_at" timestamp(3) with time zone,
	"revoked_at" timestamp(3) with time zone
);
--> statement-breakpoint
CREATE INDEX "api_keys_tenant_idx" ON "auditgraph"."api_keys" ("tenant_id","created_at");