CREATE TABLE "journal_settlements" (
	"entry_id" uuid,
	"batch_id" uuid,
	"positions" integer[] NOT NULL,
	"committed_at" timestamp(3) with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "journal_settlements_pkey" PRIMARY KEY("entry_id","batch_id")
);
