-- The platform's integrations table, as the reconciler reads it (SPEC section 2).
-- For development, tests and the demo; production already has it.
CREATE SCHEMA IF NOT EXISTS healthcare;

CREATE TABLE IF NOT EXISTS healthcare.integrations (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   uuid NOT NULL,
    type              text NOT NULL,
    provider          text NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    status            text NOT NULL DEFAULT 'pending',
    disconnect_reason text,
    config            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS integrations_instance_name_idx
    ON healthcare.integrations ((config->>'instance_name'));
