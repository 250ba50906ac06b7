"""Checks that keep credentials where they belong (see README "Security")."""
