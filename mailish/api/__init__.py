"""The mobile API (FastAPI): stateless, any pod serves any user; reads from PostgreSQL."""
