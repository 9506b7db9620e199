"""Verification of who is calling: Supabase user tokens."""
