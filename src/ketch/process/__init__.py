"""ketch.process."""
