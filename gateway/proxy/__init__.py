"""Step 6: forwarding an allowed request to its upstream, streaming both ways."""

from .forward import Forwarder
from .headers import HeaderPolicy, interaction_id

__all__ = ("Forwarder", "HeaderPolicy", "interaction_id")
