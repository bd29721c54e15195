"""Test-only code that ketch's tests share (never imported by ketch)."""
