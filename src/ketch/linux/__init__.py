"""ketch.linux."""
