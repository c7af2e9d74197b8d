"""The admin app (Starlette), on its own port."""
