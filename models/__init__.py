"""The data layer: tables, schemas, sessions and the model functions."""
