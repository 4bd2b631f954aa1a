"""Harbor agent adapters."""
