"""An HTTP front for orders: FastAPI routes publishing events over eventbus."""
