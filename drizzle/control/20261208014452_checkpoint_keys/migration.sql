CREATE TABLE "auditgraph"."checkpoint_keys" (
	"key_id" varchar(64) PRIMARY KEY,
	"public_key" text NOT NULL,
	"trusted_from" timestamp(3) with time zone NOT NULL,
	"retired_at" timestamp(3) with time zone,
	"endorsed_by" varchar(64),
	"endorsement" bytea,
	"created_at" timestamp(3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "auditgraph"."shared_settings" (
	"name" varchar(40) PRIMARY KEY,
	"fingerprint" text NOT NULL,
	"set_at" timestamp(3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "checkpoint_keys_one_current" ON "auditgraph"."checkpoint_keys" ((true)) WHERE "retired_at" is null;