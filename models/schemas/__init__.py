"""Pydantic v2 schemas, in modules named as Prefect's."""
