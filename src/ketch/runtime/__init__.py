"""ketch.runtime."""
