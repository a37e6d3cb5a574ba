"""JSON Schemas shipped with fusebench (package data): ``result.schema.json`` for result files."""
