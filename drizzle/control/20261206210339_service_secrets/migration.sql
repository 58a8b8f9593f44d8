CREATE TABLE "auditgraph"."service_secrets" (
	"name" varchar(40) PRIMARY KEY,
	"secret" text NOT NULL,
	"created_at" timestamp(3) with time zone DEFAULT now() NOT NULL
);
