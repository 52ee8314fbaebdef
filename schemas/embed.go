// Package schemas holds Ferry's SQL migrations and the outbox table
// template, embedded so the binaries carry them. Migrations are applied in
// file-name order by pgdb.Migrate; each runs once per database.
package schemas

import "embed"

// Migrations are the numbered SQL files for Ferry's own tables (schema
// "ferry"), applied in name order.
//
//go:embed migrations/*.sql
var Migrations embed.FS

// OutboxTemplate is the DDL (a text/template over the configured table and
// column names) that creates the outbox table when it does not exist.
//
//go:embed outbox.sql.tmpl
var OutboxTemplate string

// OutcomeV1 is the JSON Schema (draft 2020-12) of the outcome records the
// sink produces (topic ferry.outcomes by default): docs/connectors.md.
//
//go:embed outcome.v1.schema.json
var OutcomeV1 []byte
